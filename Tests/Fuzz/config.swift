// Fuzz harness: the config parser (ConfigParser.parse).
//
// Input: the config text (bytes decoded as UTF-8, invalid sequences replaced).
// The parser resolves no names (addresses are checked with inet_pton only) and writes no
// files; it reads files for one directive, `plans PATH`. Here PATH must be a plain name in a
// sandbox folder holding a few plan files (inputs naming anything else are skipped), so the
// harness never reads /dev/zero, a FIFO or the machine's files.
// Checks:
//   - parsing is deterministic (the same text twice gives the same config or the same error);
//   - CRLF line ends give exactly the same result as LF ones;
//   - every error has the `FILE:LINE: message` shape, names the config or one of the plan files
//     it read, with a line number within that file's lines, and a one-line, non-empty message;
//   - an accepted config has what the parser promises: a listener, apps with hosts and both
//     colors, plans that end at weight 100.

import CutoverConfig
import Glibc

let configPath = "fuzz.conf"

/// Plan files the fuzzer can point `plans` at (the dictionary names them).
let sandboxFiles: [(name: String, text: String)] = [
    ("p.conf", "plan from-file {\n    step weight 50 hold 1m\n    step weight 100\n}\n"),
    ("bad.conf", "# a plan that stops half way\nplan half {\n    step weight 50\n}\n"),
    ("notplan.conf", "listen 127.0.0.1:8080\n"),
    ("empty.conf", ""),
    ("dir/a.conf", "plan a {\n    step weight 100\n}\n"),
    ("dir/b.conf", "plan b {\r\n  step pin header X-T t1,t2\r\n  step weight 100 mirror 5\r\n  rollback_if error_rate > 1%\r\n}\r\n"),
    ("dir/notes.txt", "not a plan"),
]

/// The sandbox folder: $CUTOVER_FUZZ_SANDBOX (run.sh makes and removes it), else a new one.
let sandbox: String = {
    var folder: String
    if let given = getenv("CUTOVER_FUZZ_SANDBOX") {
        folder = String(cString: given)
        mkdir(folder, 0o700)
    } else {
        var template = Array("/tmp/cutover-fuzz-config-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { fail("mkdtemp failed") }
        folder = String(cString: made)
    }
    // The parser names plan files by their normalised path; so must the expected names.
    if let resolved = realpath(folder, nil) {
        folder = String(cString: resolved)
        free(resolved)
    }
    mkdir(folder + "/dir", 0o700)
    for file in sandboxFiles {
        guard let handle = fopen(folder + "/" + file.name, "w") else { fail("cannot write the sandbox file \(file.name)") }
        fputs(file.text, handle)
        fclose(handle)
    }
    return folder
}()

/// The parser's own line and token rules (ConfigParser.tokenize), to find `plans` lines.
func planPathsAreSafe(_ text: String) -> Bool {
    let lines = text.split(omittingEmptySubsequences: false) { $0 == "\n" || $0 == "\r\n" }
    for line in lines {
        let tokens = line.unicodeScalars.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).prefix(while: { $0.first != "#" }).map(Substring.init)
        guard let first = tokens.first, first == "plans" else { continue }
        for token in tokens.dropFirst() {
            let plain = token.unicodeScalars.allSatisfy { scalar in
                switch scalar.value {
                case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x2E, 0x5F: return true
                default: return false
                }
            }
            if !plain || token == ".." { return false }
        }
    }
    return true
}

func contains(_ data: UnsafePointer<UInt8>, _ size: Int, _ word: StaticString) -> Bool {
    let count = word.utf8CodeUnitCount
    guard size >= count else { return false }
    for start in 0...(size - count) where memcmp(data + start, word.utf8Start, count) == 0 { return true }
    return false
}

/// ConfigParser.lastLineNumber: the number of the last line (a final newline ends it).
func lastLine(_ text: String) -> Int {
    let segments = text.split(omittingEmptySubsequences: false) { $0 == "\n" || $0 == "\r\n" }
    let endsWithNewline = text.last == "\n" || text.last == "\r\n"
    return max(1, segments.count - (endsWithNewline ? 1 : 0))
}

func parse(_ text: String) -> Result<Config, ConfigError> {
    do {
        return .success(try ConfigParser.parse(text, path: configPath, baseDirectory: sandbox))
    } catch {
        return .failure(error)
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeRawBufferPointer(start: data, count: size), as: UTF8.self)
    // Only ASCII spells `plans` (no other characters are canonically equivalent to its letters).
    if contains(data, size, "plans") && !planPathsAreSafe(text) { return -1 }
    let input = UnsafeRawBufferPointer(start: data, count: size)
    func what() -> String { "config \"\(escaped(input))\"" }
    let first = parse(text)
    let second = parse(text)
    check(first == second, "\(what()): parsed twice differently: \(first) then \(second)")

    var crlf = ""
    for character in text {
        if character == "\n" { crlf += "\r\n" } else { crlf.append(character) }
    }
    if crlf != text {
        let withCRLF = parse(crlf)
        check(withCRLF == first, "\(what()): with CRLF line ends \(withCRLF), with LF \(first)")
    }

    switch first {
    case .failure(let error):
        var lines = [configPath: lastLine(text)]
        for file in sandboxFiles { lines[sandbox + "/" + file.name] = lastLine(file.text) }
        guard let count = lines[error.file] else { fail("\(what()): error names the file '\(error.file)'") }
        check((1...count).contains(error.line), "\(what()): error at line \(error.line) of a \(count)-line file: \(error)")
        check(error.description == "\(error.file):\(error.line): \(error.message)", "\(what()): error shape '\(error.description)'")
        check(!error.message.isEmpty, "\(what()): empty error message")
        check(!error.message.unicodeScalars.contains { $0 == "\n" || $0 == "\r" }, "\(what()): multi-line error: \(error)")
    case .success(let config):
        check(config.path == configPath, "\(what()): path \(config.path)")
        check(!config.listen.isEmpty && !config.apps.isEmpty, "\(what()): accepted without a listener or an app")
        for app in config.apps {
            check(!app.hosts.isEmpty && !app.blue.isEmpty && !app.green.isEmpty, "\(what()): app \(app.name) is incomplete")
        }
        for plan in config.plans {
            check(!plan.steps.isEmpty && plan.steps.compactMap(\.weight).last == 10_000, "\(what()): plan \(plan.name) does not reach 100")
        }
        check(config.limits.maxURIBytes <= config.limits.maxHeaderBytes, "\(what()): URI limit above the head limit")
    }
    return 0
}
