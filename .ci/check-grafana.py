#!/usr/bin/env python3
"""Checks conf/grafana-dashboard.json without a Grafana server.

    python3 .ci/check-grafana.py [DASHBOARD.json]

Grafana is not packaged for Debian, so the dashboard is checked against Grafana's own schema as
the grafana-foundation-sdk package (PyPI) generates it, and against the proxy's sources:

* decoded with grafana_foundation_sdk.models.dashboard.Dashboard.from_json (panel options, field
  config and Prometheus queries through the SDK's registered plugins), re-encoded, and every key
  the schema does not know is reported (a few that Grafana reads outside the schema are allowed,
  each with its reason below); enum, literal and primitive fields are checked against the types
  the SDK declares;
* every expression (panels, annotations, template variables) parses as PromQL (promql-parser, when
  installed) and names only metric families the proxy declares in Sources/ (PrometheusText
  `family(...)` calls), with label names the README's metrics table or the sample calls give that
  family;
* panel ids are unique, every query has an `expr`, panels and queries use the templated data
  source, gridPos rectangles fit 24 columns and do not overlap;
* the dashboard has Prometheus annotations, each with an expression.

Exits 1 with one line per problem; prints one summary line when all is well. Without
grafana-foundation-sdk or promql-parser installed it says so and runs the other checks:
    pip install 'grafana-foundation-sdk==1769699379!11.6.0' promql-parser
(the SDK publishes one build per Grafana version under epochs: a bare `pip install
grafana-foundation-sdk` picks the Grafana 10.1 build; the 11.6 one is the newest Grafana.)
"""

import enum
import importlib.metadata
import json
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "conf" / "grafana-dashboard.json"

# Keys Grafana reads that the SDK's schema leaves out, and why they are fine.
ALLOWED_UNMODELLED = {
    # The Prometheus data source's annotation options (its annotation support reads them next to
    # `expr`); the generic AnnotationQuery schema models only `expr`.
    ("annotation", "step"): "Prometheus annotation: evaluation step",
    ("annotation", "titleFormat"): "Prometheus annotation: title template",
    ("annotation", "textFormat"): "Prometheus annotation: text template",
    ("annotation", "tagKeys"): "Prometheus annotation: labels used as tags",
    ("annotation", "useValueForTime"): "Prometheus annotation: series value as the time",
    # The query variable editor's display string; Grafana writes it on every save.
    ("variable", "definition"): "query variable: editor display string",
}

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                   "and", "or", "unless", "inf", "nan", "le"}


class Report:
    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str] = []
        self.notes: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.name}: {where}: {message}")


# MARK: the proxy's metric families

def source_catalogue() -> tuple[dict[str, str], dict[str, set[str]], set[str]]:
    """Families declared in Sources/ (name -> type), labels by family, every cutover_* literal."""
    families: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    literals: set[str] = set()
    for path in sorted((ROOT / "Sources").rglob("*.swift")):
        text = path.read_text(encoding="utf-8")
        literals.update(re.findall(r'"(cutover_[a-z0-9_]+)"', text))
        for name, kind in re.findall(r'\bfamily\(\s*"(cutover_[a-z0-9_]+)"\s*,\s*\.(counter|gauge|histogram)', text):
            families[name] = kind
        for name in re.findall(r'\bshadowCounter\(\s*"(cutover_[a-z0-9_]+)"', text):
            families[name] = "counter"
        # Label names written literally in a sample or histogram call.
        for line in text.splitlines():
            match = re.search(r'\b(?:sample|histogram)\(\s*"(cutover_[a-z0-9_]+)"\s*,(.*)$', line)
            if match:
                labels.setdefault(match.group(1), set()).update(re.findall(r'\(\s*"([a-zA-Z_][a-zA-Z0-9_]*)"\s*,', match.group(2)))
    return families, labels, literals


def readme_labels() -> dict[str, set[str]]:
    """Labels by family from README.md's metrics table (values in parentheses left out)."""
    labels: dict[str, set[str]] = {}
    readme = ROOT / "README.md"
    if not readme.exists():
        return labels
    for line in readme.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `cutover_"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if len(cells) < 3:
            continue
        names = re.findall(r"`(cutover_[a-z0-9_]+)`", cells[0])
        found = set(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`", re.sub(r"\([^)]*\)", "", cells[2])))
        for name in names:
            labels.setdefault(name, set()).update(found)
    return labels


# MARK: PromQL

def substitute_variables(expr: str) -> str:
    """Grafana's variables replaced by something PromQL accepts where they stand."""
    expr = re.sub(r"\$\{?__(?:range|rate_interval|interval|range_s|range_ms|interval_ms)\}?", "1m", expr)
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::[a-z]+)?\}?", r"var_\1", expr)


class Catalogue:
    def __init__(self) -> None:
        self.families, source_labels, self.literals = source_catalogue()
        documented = readme_labels()
        self.labels: dict[str, set[str]] = {}
        for name, kind in self.families.items():
            found = set(source_labels.get(name, set())) | documented.get(name, set())
            if kind == "histogram":
                found.add("le")
            self.labels[name] = found
        self.undocumented = sorted(name for name in self.families if name not in documented)

    def family_of(self, series: str) -> typing.Optional[str]:
        if series in self.families:
            return series
        for suffix in ("_bucket", "_sum", "_count"):
            base = series[: -len(suffix)] if series.endswith(suffix) else None
            if base and self.families.get(base) == "histogram":
                return base
        return None


def check_expr(report: Report, catalogue: Catalogue, where: str, expr: typing.Any, used: set[str],
               label_templates: typing.Iterable[str] = (), parser: typing.Any = None) -> None:
    if not isinstance(expr, str) or not expr.strip():
        report.problem(where, "no PromQL expression (expr is missing or empty)")
        return
    plain = substitute_variables(expr)
    selectors: list[tuple[str, list[str]]] = []
    grouping: list[str] = []
    if parser is not None:
        try:
            ast = parser.parse(plain)
        except Exception as error:  # the parser raises ValueError with its message
            report.problem(where, f"expression does not parse as PromQL ({error}): {expr!r}")
            return

        def visit(node: typing.Any) -> None:
            if isinstance(node, parser.VectorSelector):
                names = [m.name for m in node.matchers.matchers if m.name != "__name__"]
                selectors.append((node.name or "", names))
            elif isinstance(node, parser.AggregateExpr) and node.modifier is not None:
                grouping.extend(node.modifier.labels)
            elif isinstance(node, parser.BinaryExpr) and node.modifier is not None:
                if node.modifier.matching is not None:
                    grouping.extend(node.modifier.matching.labels)
                if node.modifier.group_labels:
                    grouping.extend(node.modifier.group_labels)

        parser.walk(ast, visit)
    else:
        stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', plain)
        depth: list[str] = []
        for char in stripped:
            if char in "([{":
                depth.append({"(": ")", "[": "]", "{": "}"}[char])
            elif char in ")]}" and (not depth or depth.pop() != char):
                depth.append("unbalanced")
                break
        if depth:
            report.problem(where, f"unbalanced brackets: {expr!r}")
            return
        for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", stripped):
            name, braces = match.group(1), match.group(2) or ""
            following = stripped[match.end():].lstrip()[:1]
            if following == "(" or name in PROMQL_KEYWORDS or name.startswith("var_"):
                continue
            if name.startswith("cutover_") or braces:
                selectors.append((name, re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", braces)))
        for match in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", stripped):
            grouping.extend(label.strip() for label in match.group(1).split(",") if label.strip())
    if not selectors:
        report.problem(where, f"expression selects no metric: {expr!r}")
        return
    available: set[str] = set()
    for name, matcher_labels in selectors:
        family = catalogue.family_of(name)
        if family is None:
            if name in catalogue.literals:
                report.problem(where, f"{name} appears in Sources/ but is not an exported metric family")
            else:
                report.problem(where, f"metric {name or '(no name)'} is not exported by the proxy (no such family in Sources/)")
            continue
        used.add(family)
        available |= catalogue.labels[family]
        for label in matcher_labels:
            if label not in catalogue.labels[family]:
                report.problem(where, f"{name} has no label {label!r} (labels: {', '.join(sorted(catalogue.labels[family])) or 'none'})")
    if not available and all(catalogue.family_of(name) is None for name, _ in selectors):
        return
    for label in grouping:
        if label not in available:
            report.problem(where, f"groups or matches on label {label!r}, which none of its metrics has")
    for template in label_templates:
        for label in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", template or ""):
            if label not in available:
                report.problem(where, f"template {template!r} names label {label!r}, which none of its metrics has")


# MARK: the SDK

def sdk_version() -> str:
    try:
        return importlib.metadata.version("grafana-foundation-sdk")
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def key_diff(original: typing.Any, encoded: typing.Any, path: str, lost: list[str]) -> None:
    if isinstance(original, dict) and isinstance(encoded, dict):
        for key, value in original.items():
            if key not in encoded:
                lost.append(f"{path}.{key}" if path else key)
            else:
                key_diff(value, encoded[key], f"{path}.{key}" if path else key, lost)
    elif isinstance(original, list) and isinstance(encoded, list) and len(original) == len(encoded):
        for index, (a, b) in enumerate(zip(original, encoded)):
            key_diff(a, b, f"{path}[{index}]", lost)


def accepts(value: typing.Any, hint: typing.Any) -> typing.Optional[str]:
    """None when `value` fits `hint`, else what was expected."""
    if hint is None or hint is typing.Any or isinstance(hint, typing.TypeVar) or hint is object:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        expected = []
        for branch in args:
            if branch is type(None):
                continue
            failure = accepts(value, branch)
            if failure is None:
                return None
            expected.append(failure)
        return " or ".join(expected)
    if origin is typing.Literal:
        return None if value in args else "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, typing.List):
        if not isinstance(value, list):
            return "a list"
        for item in value:
            failure = accepts(item, args[0]) if args else None
            if failure is not None:
                return f"a list of {failure}"
        return None
    if origin in (dict, typing.Dict):
        return None if isinstance(value, dict) else "an object"
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            values = [member.value for member in hint]
            raw = value.value if isinstance(value, enum.Enum) else value
            return None if raw in values else "one of " + ", ".join(repr(v) for v in values)
        if hint is bool:
            return None if isinstance(value, bool) else "a boolean"
        if hint is int:
            return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
        if hint is float:
            return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
        if hint is str:
            return None if isinstance(value, str) else "a string"
        if hint.__module__.startswith("grafana_foundation_sdk"):
            # Decoded objects are built by from_json; a raw dict here means a union the SDK left
            # undecoded, which its own to_json writes back as is.
            return None if isinstance(value, (hint, dict)) else f"an object ({hint.__name__})"
    return None


def check_types(report: Report, node: typing.Any, where: str, seen: set[int], data: dict) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, list):
        for index, item in enumerate(node):
            check_types(report, item, f"{where}[{index}]", seen, data)
        return
    if isinstance(node, dict) or not type(node).__module__.startswith("grafana_foundation_sdk"):
        return
    try:
        hints = typing.get_type_hints(type(node))
    except Exception:
        hints = {}
    for attribute, value in vars(node).items():
        if attribute == "data":  # UnknownDataquery's bag
            continue
        failure = accepts(value, hints.get(attribute))
        if failure is not None:
            report.problem(describe(f"{where}.{attribute}", data), f"{value!r} does not fit Grafana's schema: expected {failure}")
        check_types(report, value, f"{where}.{attribute}", seen, data)


def sdk_check(report: Report, data: dict) -> typing.Optional[str]:
    """Decodes with the SDK; returns its version, or None when it is not installed."""
    try:
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.cog.plugins import register_default_plugins
        from grafana_foundation_sdk.models.dashboard import Dashboard
    except ImportError as error:
        report.notes.append(f"grafana-foundation-sdk is not importable ({error}): schema decoding skipped, "
                            "structural checks only (pip install 'grafana-foundation-sdk==1769699379!11.6.0')")
        return None
    version = sdk_version()
    target = re.match(r"(?:\d+!)?(\d+)\.(\d+)", version)
    if target and (int(target.group(1)), int(target.group(2))) < (10, 4):
        report.notes.append(f"grafana-foundation-sdk {version} models Grafana {target.group(1)}.{target.group(2)}, older than "
                            "this schemaVersion 39 dashboard (Grafana 10.4 and later): keys added since are reported as "
                            "unknown; install 'grafana-foundation-sdk==1769699379!11.6.0'")
    register_default_plugins()
    try:
        dashboard = Dashboard.from_json(data)
        encoded = json.loads(json.dumps(dashboard, cls=JSONEncoder))
    except Exception as error:
        report.problem("dashboard", f"grafana-foundation-sdk cannot decode it: {type(error).__name__}: {error}")
        return version

    lost: list[str] = []
    key_diff(data, encoded, "", lost)
    for path in lost:
        key = path.rsplit(".", 1)[-1]
        if re.fullmatch(r"annotations\.list\[\d+\]\.[A-Za-z]+", path):
            kind = "annotation"
        elif re.fullmatch(r"templating\.list\[\d+\]\.[A-Za-z]+", path):
            kind = "variable"
        else:
            kind = ""
        if (kind, key) not in ALLOWED_UNMODELLED:
            report.problem(describe(path, data), f"key {key!r} is not in Grafana's dashboard schema (grafana-foundation-sdk drops it)")

    check_types(report, dashboard, "", set(), data)
    return version


def describe(path: str, data: dict) -> str:
    """`panels[3].options.x` named with the panel's id and title."""
    path = path.lstrip(".")
    match = re.match(r"panels\[(\d+)\](.*)", path)
    if match:
        panels = data.get("panels") or []
        index = int(match.group(1))
        if index < len(panels) and isinstance(panels[index], dict):
            panel = panels[index]
            return f"panel {panel.get('id')} {panel.get('title')!r} {match.group(2).lstrip('.')}".rstrip()
    return path or "dashboard"


# MARK: structure

def all_panels(data: dict) -> list[dict]:
    panels: list[dict] = []
    for panel in data.get("panels") or []:
        if isinstance(panel, dict):
            panels.append(panel)
            panels.extend(p for p in panel.get("panels") or [] if isinstance(p, dict))
    return panels


def datasource_variables(data: dict) -> set[str]:
    return {v.get("name") for v in (data.get("templating") or {}).get("list") or []
            if isinstance(v, dict) and v.get("type") == "datasource"}


def templated(datasource: typing.Any, variables: set[str]) -> bool:
    uid = datasource.get("uid") if isinstance(datasource, dict) else datasource
    match = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", uid or "")
    return bool(match) and match.group(1) in variables


def structure_check(report: Report, data: dict, catalogue: Catalogue, parser: typing.Any) -> tuple[int, int, set[str]]:
    used: set[str] = set()
    if not isinstance(data.get("schemaVersion"), int):
        report.problem("dashboard", "schemaVersion is missing or not an integer")
    variables = datasource_variables(data)
    if not variables:
        report.problem("templating", "no datasource variable: the dashboard must not name a fixed data source")

    panels = all_panels(data)
    seen_ids: dict[int, str] = {}
    rectangles: list[tuple[str, int, int, int, int]] = []
    for panel in panels:
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        pid = panel.get("id")
        if not isinstance(pid, int) or isinstance(pid, bool):
            report.problem(where, "id is missing or not an integer")
        elif pid in seen_ids:
            report.problem(where, f"id {pid} is also used by {seen_ids[pid]}")
        else:
            seen_ids[pid] = where
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "hwxy"):
            report.problem(where, "gridPos needs integer h, w, x and y")
        else:
            h, w, x, y = (grid[k] for k in "hwxy")
            if h < 1 or w < 1 or x < 0 or y < 0 or x + w > 24:
                report.problem(where, f"gridPos {grid} is outside the 24-column grid")
            rectangles.append((where, x, y, w, h))
        if panel.get("type") == "row":
            if panel.get("targets"):
                report.problem(where, "a row has queries")
            continue
        if not templated(panel.get("datasource"), variables):
            report.problem(where, f"datasource {panel.get('datasource')!r} is not the templated data source variable")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            report.problem(where, "no queries (targets)")
            continue
        refs: set[str] = set()
        for target in targets:
            ref = target.get("refId") if isinstance(target, dict) else None
            twhere = f"{where} query {ref}"
            if not isinstance(target, dict):
                report.problem(where, "a query is not an object")
                continue
            if not ref or ref in refs:
                report.problem(twhere, "refId missing or repeated")
            refs.add(ref)
            if not templated(target.get("datasource", panel.get("datasource")), variables):
                report.problem(twhere, f"datasource {target.get('datasource')!r} is not the templated data source variable")
            check_expr(report, catalogue, twhere, target.get("expr"), used, [target.get("legendFormat", "")], parser)

    for i, (a, ax, ay, aw, ah) in enumerate(rectangles):
        for b, bx, by, bw, bh in rectangles[i + 1:]:
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                report.problem(a, f"gridPos overlaps {b}")

    annotations = [a for a in (data.get("annotations") or {}).get("list") or [] if isinstance(a, dict)]
    queries = [a for a in annotations if not a.get("builtIn")]
    if not queries:
        report.problem("annotations", "no annotation driven by a metric (only Grafana's built-in one)")
    names: set[str] = set()
    for annotation in queries:
        where = f"annotation {annotation.get('name')!r}"
        if not annotation.get("name") or annotation.get("name") in names:
            report.problem(where, "name missing or repeated")
        names.add(annotation.get("name"))
        if not templated(annotation.get("datasource"), variables):
            report.problem(where, f"datasource {annotation.get('datasource')!r} is not the templated data source variable")
        templates = [annotation.get("titleFormat", ""), annotation.get("textFormat", "")]
        templates += ["{{%s}}" % key.strip() for key in (annotation.get("tagKeys") or "").split(",") if key.strip()]
        check_expr(report, catalogue, where, annotation.get("expr"), used, templates, parser)

    for variable in (data.get("templating") or {}).get("list") or []:
        if isinstance(variable, dict) and variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query") if isinstance(query, dict) else query
            match = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", text or "")
            where = f"variable {variable.get('name')!r}"
            if not templated(variable.get("datasource"), variables):
                report.problem(where, "datasource is not the templated data source variable")
            if match:
                check_expr(report, catalogue, where, match.group(1), used, ["{{%s}}" % match.group(2)], parser)
            else:
                report.problem(where, f"query {text!r} is not label_values(SELECTOR, LABEL)")
    return len([p for p in panels if p.get("type") != "row"]), len(queries), used


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    try:
        name = str(path.resolve().relative_to(ROOT))
    except ValueError:
        name = str(path)
    report = Report(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"{name}: cannot load: {error}", file=sys.stderr)
        return 1
    if not isinstance(data, dict):
        print(f"{name}: not a JSON object", file=sys.stderr)
        return 1

    try:
        import promql_parser as parser
        parser_name = f"promql-parser {importlib.metadata.version('promql-parser')}"
    except ImportError:
        parser = None
        parser_name = None
        report.notes.append("promql-parser is not importable: expressions scanned with regular expressions, not parsed "
                            "(pip install promql-parser)")
    catalogue = Catalogue()
    if not catalogue.families:
        report.problem("Sources/", "no metric family found (family(\"cutover_...\") calls): is this the repository?")
    version = sdk_check(report, data)
    panels, annotations, used = structure_check(report, data, catalogue, parser)
    undocumented = [n for n in catalogue.undocumented if n in used]
    if undocumented:
        report.notes.append("labels taken from the sources only (not in README's metrics table): " + ", ".join(undocumented))

    for note in report.notes:
        print(f"{name}: note: {note}", file=sys.stderr)
    for line in report.problems:
        print(line, file=sys.stderr)
    if report.problems:
        print(f"{name}: {len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    decoded = f"decoded by grafana-foundation-sdk {version}" if version else "NOT decoded (grafana-foundation-sdk missing)"
    parsed = f"parsed by {parser_name}" if parser_name else "not parsed (promql-parser missing)"
    print(f"{name}: ok — {panels} panels, {annotations} annotations, {len(used)} metric families; "
          f"{decoded}; PromQL {parsed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
