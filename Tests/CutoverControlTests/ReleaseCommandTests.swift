import CutoverConfig
import CutoverControl
import XCTest

/// The words of `weight`, `pin`, `unpin` and `pins`: what parses, and what is a usage error
/// (answered as a JSON error, nothing changed).
final class ReleaseCommandTests: XCTestCase {
    private func parsed(_ line: String) -> AdminCommand? {
        if case .success(let command) = AdminCommands.parse(line) { return command }
        return nil
    }

    func testWeightTakesAPercentWithUpToTwoDecimals() {
        XCTAssertEqual(parsed("weight green 10"), .weight(.green, basisPoints: 1_000, app: nil, force: false, reason: nil))
        XCTAssertEqual(parsed("weight green 12.5"), .weight(.green, basisPoints: 1_250, app: nil, force: false, reason: nil))
        XCTAssertEqual(parsed("weight blue 0.25 app api force reason pilot wave"),
                       .weight(.blue, basisPoints: 25, app: "api", force: true, reason: "pilot wave"))
        XCTAssertEqual(parsed("weight green 0"), .weight(.green, basisPoints: 0, app: nil, force: false, reason: nil))
        XCTAssertEqual(parsed("weight green 100.00"), .weight(.green, basisPoints: 10_000, app: nil, force: false, reason: nil))
        for bad in ["weight green 101", "weight green -1", "weight green 10.001", "weight green 1e1", "weight green 10.",
                    "weight green .5", "weight green ten", "weight green 100.01", "weight purple 10", "weight green",
                    "weight 10", "weight green 10 app", "weight green 10 because", "weight green 0x10"] {
            XCTAssertEqual(AdminCommands.parse(bad), .failure(.usage(AdminCommands.table.first { $0.name == "weight" }!.usage)), bad)
        }
    }

    func testPinAndUnpinWords() {
        XCTAssertEqual(parsed("pin api header X-Tenant pilot-1,pilot-2 green reason wave 1"),
                       .pin(app: "api", source: .header, name: "X-Tenant", values: ["pilot-1", "pilot-2"], color: .green, reason: "wave 1"))
        XCTAssertEqual(parsed("pin * cookie beta yes blue"),
                       .pin(app: "*", source: .cookie, name: "beta", values: ["yes"], color: .blue, reason: nil))
        for bad in ["pin api header X-Tenant green", "pin api header X-Tenant a,,b green", "pin api header X-Tenant a,a green",
                    "pin api query t a green", "pin api header X-Tenant a purple", "pin api header X;Y a green",
                    "pin api header X-Tenant a green force"] {
            XCTAssertNil(parsed(bad), bad)
        }
        XCTAssertEqual(parsed("unpin api"), .unpin(app: "api", source: nil, name: nil, value: nil, reason: nil))
        XCTAssertEqual(parsed("unpin * header X-Tenant pilot-1 reason done"),
                       .unpin(app: "*", source: .header, name: "X-Tenant", value: "pilot-1", reason: "done"))
        XCTAssertEqual(parsed("unpin api cookie beta"), .unpin(app: "api", source: .cookie, name: "beta", value: nil, reason: nil))
        for bad in ["unpin", "unpin api header", "unpin api query x", "unpin api header X a b"] {
            XCTAssertNil(parsed(bad), bad)
        }
        XCTAssertEqual(parsed("pins"), .pins)
        XCTAssertNil(parsed("pins api"))
        XCTAssertTrue(AdminCommand.weight(.green, basisPoints: 1, app: nil, force: false, reason: nil).changesState)
        XCTAssertFalse(AdminCommand.pins.changesState)
    }
}

extension ReleaseCommandTests {
    /// Found by Tests/Fuzz/admin: "a \u{200D}b" (a space, then a zero-width joiner) is one Swift
    /// Character, so splitting on Characters made two words of three; a tab did not.
    func testWordsAreSplitOnScalarsNotCharacters() {
        let withSpace = AdminCommands.parse("undrain web \u{200D}10.0.0.1:80")
        let withTab = AdminCommands.parse("undrain web\t\u{200D}10.0.0.1:80")
        XCTAssertEqual(withSpace, withTab)
        XCTAssertEqual(withSpace, .success(.undrain(app: "web", server: "\u{200D}10.0.0.1:80")))
    }

    /// Found by Tests/Fuzz/admin: an unknown command's name is echoed in the error; a line feed
    /// or a terminal escape in it must not reach a terminal or a log as such.
    func testUnknownCommandNamesAreEchoedWithoutControlCharacters() {
        guard case .failure(let error) = AdminCommands.parse("fro\u{1B}[2J\nb x") else { return XCTFail("accepted") }
        XCTAssertEqual(error.message, "unknown command 'fro\\u001b[2J\\nb'; try 'help'")
    }
}
