import CutoverConfig
import CutoverRouting
import CutoverTestSupport
import XCTest

/// The guarantee sticky users rest on: a key's bucket is fixed for a release, the candidate
/// takes the lowest buckets, so a weight change only moves keys in its own direction.
final class StickyAssignmentTests: XCTestCase {
    /// 16 hex digits, like the ids the proxy sets as cookies.
    private func keys(_ count: Int, seed: UInt64) -> [String] {
        var generator = SeededGenerator(state: seed)
        return (0..<count).map { _ in
            let digits = String(generator.next(), radix: 16)
            return String(repeating: "0", count: 16 - digits.count) + digits
        }
    }

    /// The buckets of `count` random ids (16 hex digits each, as the proxy makes them), without
    /// making strings.
    private func buckets(_ count: Int, keySeed: UInt64, hashSeed: UInt64) -> [Int] {
        var generator = SeededGenerator(state: keySeed)
        var text = [UInt8](repeating: 0, count: 16)
        let digits = Array("0123456789abcdef".utf8)
        var result = [Int]()
        result.reserveCapacity(count)
        for _ in 0..<count {
            let id = generator.next()
            for index in 0..<16 {
                text[index] = digits[Int((id >> (60 - 4 * UInt64(index))) & 0xF)]
            }
            result.append(text.withUnsafeBytes { StickyHash.bucket(seed: hashSeed, key: $0) })
        }
        return result
    }

    private func onCandidate(_ split: TrafficSplit, _ bucket: Int) -> Bool { split.pool(forBucket: bucket) == .green }

    /// Over 10⁶ keys: raising the candidate's weight step by step never moves a key from the
    /// candidate back to the stable pool, lowering it never moves one the other way.
    func testWeightChangesMoveKeysOnlyInTheirDirectionOverAMillionKeys() {
        let seed = StickyHash.seed(salt: 0x5F0C_2D7E_9A41_B386, app: "checkout")
        let buckets = buckets(1_000_000, keySeed: 42, hashSeed: seed)
        let rising = [0, 1, 1_000, 1_050, 2_500, 5_000, 7_525, 9_999, 10_000]
        for (lower, higher) in zip(rising, rising.dropFirst()) {
            // Where each bucket goes under each split, as the data plane asks (`pool(forBucket:)`).
            let before = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: lower)
            let after = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: higher)
            let wasOn = (0..<10_000).map { onCandidate(before, $0) }
            let isOn = (0..<10_000).map { onCandidate(after, $0) }
            var movedBack = 0
            var movedOn = 0
            for bucket in buckets {
                if wasOn[bucket] && !isOn[bucket] { movedBack += 1 }
                if !wasOn[bucket] && isOn[bucket] { movedOn += 1 }
            }
            XCTAssertEqual(movedBack, 0, "raising \(lower) → \(higher) moved keys off the candidate")
            XCTAssertGreaterThan(movedOn, 0, "raising \(lower) → \(higher) moved nobody on")
            // Read the other way, the same pair is a lowering step: it moves nobody onto the candidate.
            XCTAssertEqual(buckets.filter { isOn[$0] == false && wasOn[$0] }.count, 0)
            XCTAssertEqual(Double(buckets.filter { isOn[$0] }.count) / 10_000, Double(higher) / 100, accuracy: 0.1)
        }
    }

    /// The candidate's share of distinct keys is its weight: within 0.2 percentage points at
    /// 10⁵ keys (about 1.3 to 2 standard errors at these weights, so the fixed seed matters),
    /// and within 0.1 at 10⁶ keys (over 2 standard errors everywhere).
    func testTheCandidatesShareOfKeysIsItsWeight() {
        let seed = StickyHash.seed(salt: 7, app: "api")
        let small = buckets(100_000, keySeed: 1, hashSeed: seed)
        let large = buckets(1_000_000, keySeed: 2, hashSeed: seed)
        for weight in [100, 1_000, 2_500, 5_000, 9_000] {
            let smallShare = Double(small.filter { $0 < weight }.count) / Double(small.count) * 100
            let largeShare = Double(large.filter { $0 < weight }.count) / Double(large.count) * 100
            XCTAssertEqual(smallShare, Double(weight) / 100, accuracy: 0.2, "weight \(weight) bp over 10⁵ keys")
            XCTAssertEqual(largeShare, Double(weight) / 100, accuracy: 0.1, "weight \(weight) bp over 10⁶ keys")
        }
    }

    /// Every bucket is reachable and none is favoured: a chi-square test over 10⁶ keys.
    func testBucketsAreUniform() {
        let seed = StickyHash.seed(salt: 99, app: "web")
        var counts = [Int](repeating: 0, count: 10_000)
        for bucket in buckets(1_000_000, keySeed: 3, hashSeed: seed) { counts[bucket] += 1 }
        let expected = 100.0
        let chiSquare = counts.reduce(0.0) { $0 + pow(Double($1) - expected, 2) / expected }
        // 9,999 degrees of freedom: mean 9,999, standard deviation about 141; 10,600 is over 4σ.
        XCTAssertLessThan(chiSquare, 10_600)
        XCTAssertGreaterThan(chiSquare, 9_400)
    }

    /// The salt and the app name reshuffle keys; the same salt places them the same way again
    /// (what keeps a user on their color across a restart).
    func testTheSaltAndAppNameDecideTheBucket() {
        let sample = keys(2_000, seed: 4)
        let first = sample.map { StickyHash.bucket(seed: StickyHash.seed(salt: 1, app: "api"), key: $0) }
        let again = sample.map { StickyHash.bucket(seed: StickyHash.seed(salt: 1, app: "api"), key: $0) }
        let otherSalt = sample.map { StickyHash.bucket(seed: StickyHash.seed(salt: 2, app: "api"), key: $0) }
        let otherApp = sample.map { StickyHash.bucket(seed: StickyHash.seed(salt: 1, app: "web"), key: $0) }
        XCTAssertEqual(first, again)
        XCTAssertLessThan(zip(first, otherSalt).filter { $0 == $1 }.count, 10)
        XCTAssertLessThan(zip(first, otherApp).filter { $0 == $1 }.count, 10)
    }
}

final class PinIndexTests: XCTestCase {
    private func lookup(_ table: PinTable, _ value: String) -> PoolID? {
        var value = value
        return value.withUTF8 { table.pool(for: UnsafeRawBufferPointer($0)) }
    }

    func testValuesAreMatchedExactlyAndCaseSensitively() {
        let index = PinIndex([
            PinRule(source: .header, name: "X-Tenant", values: ["pilot-1", "pilot-2"], color: .green),
            PinRule(source: .header, name: "x-tenant", values: ["big-customer"], color: .blue),
            PinRule(source: .cookie, name: "beta", values: ["yes"], color: .green),
        ])
        XCTAssertEqual(index.lookups.count, 2, "one lookup per source and name")
        let tenant = index.lookups[0]
        XCTAssertEqual(tenant.name, Array("x-tenant".utf8), "header names are lowercased")
        XCTAssertEqual(lookup(tenant.table, "pilot-1"), .green)
        XCTAssertEqual(lookup(tenant.table, "pilot-2"), .green)
        XCTAssertEqual(lookup(tenant.table, "big-customer"), .blue)
        XCTAssertNil(lookup(tenant.table, "Pilot-1"), "values are case-sensitive")
        XCTAssertNil(lookup(tenant.table, "pilot-"))
        XCTAssertNil(lookup(tenant.table, "pilot-10"))
        XCTAssertNil(lookup(tenant.table, ""))
        XCTAssertEqual(index.lookups[1].name, Array("beta".utf8))
        XCTAssertEqual(lookup(index.lookups[1].table, "yes"), .green)
    }

    func testTenThousandValuesAllFoundAndNothingElse() {
        let values = (0..<10_000).map { "tenant-\($0)" }
        let table = PinTable(values.enumerated().map { ($1, $0 % 2 == 0 ? PoolID.green : .blue) })
        XCTAssertEqual(table.count, 10_000)
        for (offset, value) in values.enumerated() {
            XCTAssertEqual(lookup(table, value), offset % 2 == 0 ? .green : .blue)
        }
        for other in 10_000..<12_000 { XCTAssertNil(lookup(table, "tenant-\(other)")) }
    }
}
