import CutoverConfig
import CutoverRouting
import CutoverSystem
import XCTest

final class RouteMatcherTests: XCTestCase {
    private func app(_ name: String, hosts: [String], prefix: String? = nil) -> AppRoute {
        AppRoute(name: name, hosts: hosts, pathPrefix: prefix, blue: [], green: [], split: .all(to: .blue))
    }

    private func match(_ matcher: RouteMatcher, _ authority: String, _ path: String) -> Int? {
        Array(authority.utf8).withUnsafeBytes { authority in
            Array(path.utf8).withUnsafeBytes { path in matcher.match(authority: authority, path: path) }
        }
    }

    func testMostSpecificHostThenLongestPrefixWins() {
        let matcher = RouteMatcher(apps: [
            app("shop", hosts: ["shop.example"]),
            app("shop-api", hosts: ["shop.example"], prefix: "/api/"),
            app("catch-all", hosts: ["*"]),
            app("any-admin", hosts: ["*"], prefix: "/admin"),
            app("api-v1", hosts: ["api.example"], prefix: "/v1/"),
        ])
        XCTAssertEqual(match(matcher, "shop.example", "/"), 0)
        XCTAssertEqual(match(matcher, "shop.example", "/api/orders"), 1)
        XCTAssertEqual(match(matcher, "shop.example", "/api"), 0, "a prefix is matched byte for byte")
        XCTAssertEqual(match(matcher, "other.example", "/x"), 2)
        XCTAssertEqual(match(matcher, "other.example", "/admin/users"), 3)
        // A path the named host's apps do not claim still reaches a wildcard app.
        XCTAssertEqual(match(matcher, "shop.example", "/admin"), 0, "the host's app without a prefix claims every path")
        XCTAssertEqual(match(matcher, "api.example", "/v1/x"), 4)
        XCTAssertEqual(match(matcher, "api.example", "/admin/x"), 3, "paths the host's apps do not claim reach wildcard apps")
        XCTAssertEqual(match(matcher, "api.example", "/v2"), 2)
    }

    func testHostIgnoresCasePortAndOneTrailingDot() {
        let matcher = RouteMatcher(apps: [app("web", hosts: ["www.example.com"])])
        XCTAssertEqual(match(matcher, "WWW.Example.COM", "/"), 0)
        XCTAssertEqual(match(matcher, "www.example.com:8443", "/"), 0)
        XCTAssertEqual(match(matcher, "www.example.com.", "/"), 0)
        XCTAssertNil(match(matcher, "www.example.com..", "/"))
        XCTAssertNil(match(matcher, "example.com", "/"))
        XCTAssertNil(match(matcher, "", "/"))
    }

    func testIPv6LiteralAuthority() {
        let matcher = RouteMatcher(apps: [app("v6", hosts: ["[::1]"])])
        XCTAssertEqual(match(matcher, "[::1]:8080", "/"), 0)
        XCTAssertEqual(match(matcher, "[::1]", "/"), 0)
        XCTAssertNil(match(matcher, "[::2]", "/"))
    }

    func testNoAppsMatchesNothing() {
        XCTAssertNil(match(RouteMatcher(apps: []), "a", "/"))
    }
}

final class TrafficSplitTests: XCTestCase {

    func testAllToOnePoolHasASoleTarget() {
        let split = TrafficSplit.all(to: .green)
        XCTAssertEqual(split.soleTarget, .green)
        XCTAssertEqual(split.share(of: .green), 10_000)
        XCTAssertEqual(split.share(of: .blue), 0)
        XCTAssertEqual(split.pool(forBucket: 0), .green)
        XCTAssertEqual(split.pool(forBucket: 9_999), .green)
    }

    func testTheCandidateTakesTheLowestBuckets() {
        let split = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: 1_050)
        XCTAssertNil(split.soleTarget)
        XCTAssertEqual(split.pool(forBucket: 0), .green)
        XCTAssertEqual(split.pool(forBucket: 1_049), .green)
        XCTAssertEqual(split.pool(forBucket: 1_050), .blue)
        XCTAssertEqual(split.pool(forBucket: 9_999), .blue)
        XCTAssertEqual(split.largestShare, .blue)
        XCTAssertEqual(TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: 0).soleTarget, .blue)
        XCTAssertEqual(TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: 10_000).soleTarget, .green)
        XCTAssertEqual(TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: 20_000).soleTarget, .green)
    }

    /// Raising the candidate's weight never moves a bucket from the candidate to the stable pool.
    func testRaisingTheWeightOnlyMovesBucketsToTheCandidate() {
        var previous = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: 0)
        for weight in stride(from: 100, through: 10_000, by: 700) {
            let next = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: weight)
            for bucket in 0..<10_000 where previous.pool(forBucket: bucket) == .green {
                XCTAssertEqual(next.pool(forBucket: bucket), .green, "bucket \(bucket) left the candidate at \(weight)")
            }
            previous = next
        }
    }

    /// The spread selector gives each pool its exact share of every 10,000 requests, and spreads
    /// them: a 10 % candidate never waits more than a few dozen requests for its next one.
    func testSpreadGivesExactSharesEvenlyInterleaved() {
        for weight in [1, 50, 1_000, 3_333, 5_000, 9_999] {
            let split = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: weight)
            var selector = SpreadSelector()
            var toCandidate = 0
            var seen = Set<Int>()
            for _ in 0..<10_000 {
                let bucket = selector.nextBucket()
                seen.insert(bucket)
                if split.pool(forBucket: bucket) == .green { toCandidate += 1 }
            }
            XCTAssertEqual(seen.count, 10_000, "every bucket once in 10,000 requests")
            XCTAssertEqual(toCandidate, weight)
        }
        let tenPercent = TrafficSplit.weighted(stable: .blue, candidate: .green, candidateBasisPoints: 1_000)
        var selector = SpreadSelector()
        var sinceLast = 0
        var longestGap = 0
        for _ in 0..<10_000 {
            if tenPercent.pool(forBucket: selector.nextBucket()) == .green {
                longestGap = max(longestGap, sinceLast)
                sinceLast = 0
            } else {
                sinceLast += 1
            }
        }
        XCTAssertLessThan(longestGap, 30)
    }
}

final class RoutingTableTests: XCTestCase {
    private func server(_ id: Int, _ port: UInt16) -> ServerEntry {
        ServerEntry(id: id, name: "127.0.0.1:\(port)", address: SocketAddress(numericHost: "127.0.0.1", port: port)!, routable: true)
    }

    func testSwitchingSetsEveryAppsSplitAndKeepsServers() {
        let apps = [
            AppRoute(name: "a", hosts: ["*"], pathPrefix: nil, blue: [server(0, 1)], green: [server(1, 2)], split: .all(to: .blue)),
            AppRoute(name: "b", hosts: ["b"], pathPrefix: nil, blue: [server(2, 3)], green: [server(3, 4)],
                     split: .weighted(stable: .blue, candidate: .green, candidateBasisPoints: 500)),
        ]
        let table = RoutingTable(apps: apps)
        XCTAssertEqual(table.activeColor, .blue)
        let switched = table.with(activeColor: .green)
        XCTAssertEqual(switched.activeColor, .green)
        XCTAssertEqual(switched.apps.map(\.split), [.all(to: .green), .all(to: .green)])
        XCTAssertEqual(switched.apps[1].servers(PoolID.green).map(\.id), [3])
        let canary = switched.with { app, split in app == "b" ? .weighted(stable: .green, candidate: .blue, candidateBasisPoints: 100) : split }
        XCTAssertEqual(canary.apps[0].split, .all(to: .green))
        XCTAssertEqual(canary.apps[1].split.share(of: .blue), 100)
    }

    func testPublisherHandsOutTheNewTableWithItsGeneration() {
        let publisher = RoutingPublisher(RoutingTable(activeColor: .blue, apps: []))
        XCTAssertEqual(publisher.generation, 1)
        let generation = publisher.update { $0.with(activeColor: .green) }
        XCTAssertEqual(generation, 2)
        XCTAssertEqual(publisher.generation, 2)
        XCTAssertEqual(publisher.snapshot().generation, 2)
    }
}
