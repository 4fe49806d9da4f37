"""The section of BENCHMARKS.md a benchmark script maintains, between its markers."""


def replace_section(out, marker, section):
    """Writes `section` (which starts and ends with the marker comments) into `out`, in place of
    the previous one, or at the end when there is none."""
    begin_mark, end_mark = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    try:
        previous = open(out).read()
    except FileNotFoundError:
        previous = ""
    begin, end = previous.find(begin_mark), previous.find(end_mark)
    if begin >= 0 and end >= 0:
        text = previous[:begin] + section.rstrip("\n") + previous[end + len(end_mark):]
    else:
        text = previous.rstrip("\n") + "\n\n" + section
    open(out, "w").write(text)
