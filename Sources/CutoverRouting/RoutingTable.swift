import CutoverConfig
import CutoverSystem
import Synchronization

/// One upstream server as the routing table knows it. `id` is stable for an address across
/// reloads, so per-loop keep-alive pools survive a publish.
public struct ServerEntry: Sendable, Equatable {
    public let id: Int
    public let name: String  // "127.0.0.1:8091" as configured
    public let address: SocketAddress
    /// `name` as bytes: the Host of a forwarded HTTP/1.0 request that named none.
    public let hostHeader: [UInt8]
    /// Health and operator state fold into this flag (control plane); routable = healthy AND enabled.
    public var routable: Bool

    public init(id: Int, name: String, address: SocketAddress, routable: Bool) {
        self.id = id
        self.name = name
        self.address = address
        self.hostHeader = Array(name.utf8)
        self.routable = routable
    }
}

public struct AppRoute: Sendable {
    public let name: String
    /// Lowercased host names; `*` matches any host.
    public let hosts: [String]
    public let pathPrefix: String?
    public let blue: [ServerEntry]
    public let green: [ServerEntry]
    /// Which pool takes what share of the app's requests, the stable pool, and pins.
    public var policy: AppPolicy

    public var split: TrafficSplit {
        get { policy.split }
        set { policy.split = newValue }
    }

    public init(name: String, hosts: [String], pathPrefix: String?, blue: [ServerEntry], green: [ServerEntry],
                split: TrafficSplit) {
        self.init(name: name, hosts: hosts, pathPrefix: pathPrefix, blue: blue, green: green,
                  policy: AppPolicy(split: split, stable: split.largestShare))
    }

    public init(name: String, hosts: [String], pathPrefix: String?, blue: [ServerEntry], green: [ServerEntry],
                policy: AppPolicy) {
        self.name = name
        self.hosts = hosts
        self.pathPrefix = pathPrefix
        self.blue = blue
        self.green = green
        self.policy = policy
    }

    public func servers(_ color: Color) -> [ServerEntry] { color == .blue ? blue : green }
    public func servers(_ pool: PoolID) -> [ServerEntry] { servers(pool.color) }
}

/// How one app's requests are routed, as the control plane decides it: the split between its
/// stable pool and the candidate, and the pins that win over it. Published with the table.
public struct AppPolicy: Sendable, Equatable {
    public var split: TrafficSplit
    /// The pool that last carried every request; a pin to a pool with no routable server
    /// falls back to it. The other pool is the candidate (what the preview listener reaches).
    public var stable: PoolID
    /// Pins in force (suspended pins are left out).
    public var pins: [PinRule]
    /// Copies to the candidate and the shadow diff (`basisPoints` 0: off).
    public var mirror: MirrorSettings

    public init(split: TrafficSplit, stable: PoolID, pins: [PinRule] = [], mirror: MirrorSettings = MirrorSettings()) {
        self.split = split
        self.stable = stable
        self.pins = pins
        self.mirror = mirror
    }

    /// Every request to `color`, no pins.
    public static func all(to color: Color) -> AppPolicy {
        AppPolicy(split: .all(to: PoolID(color)), stable: PoolID(color))
    }

    /// The pool that is not the stable one.
    public var candidate: PoolID { PoolID(stable.color.other) }
}

/// The immutable routing state: apps, the pools of each and how each app's requests are split
/// among them. A switch is a new table published atomically; loops pick it up at their next
/// request.
public final class RoutingTable: Sendable {
    public let apps: [AppRoute]

    public init(apps: [AppRoute]) {
        self.apps = apps
    }

    /// Every app sending every request to `activeColor`.
    public convenience init(activeColor: Color, apps: [AppRoute]) {
        self.init(apps: apps.map { app in
            var app = app
            app.policy = .all(to: activeColor)
            return app
        })
    }

    /// The stable color (of the first app): what `status` calls active. Blue for a table
    /// without apps.
    public var activeColor: Color { apps.first?.policy.stable.color ?? .blue }

    /// Builds the table from a configuration, resolving server addresses (blocking: control
    /// plane only). Unresolvable servers are configuration errors with their line.
    public convenience init(config: Config, activeColor: Color, registry: ServerRegistry) throws(ConfigError) {
        var apps: [AppRoute] = []
        for app in config.apps {
            func entries(_ endpoints: [Endpoint]) throws(ConfigError) -> [ServerEntry] {
                var result: [ServerEntry] = []
                for endpoint in endpoints {
                    guard let address = SocketAddress.resolve(host: endpoint.host, port: endpoint.port) else {
                        throw ConfigError(file: config.path, line: endpoint.line, message: "cannot resolve server '\(endpoint.host)'")
                    }
                    result.append(ServerEntry(
                        id: registry.id(for: address, name: endpoint.description), name: endpoint.description, address: address, routable: true))
                }
                return result
            }
            apps.append(AppRoute(
                name: app.name, hosts: app.hosts, pathPrefix: app.pathPrefix,
                blue: try entries(app.blue), green: try entries(app.green), policy: .all(to: activeColor)))
        }
        self.init(apps: apps)
    }

    /// The same table with every app's requests going to `activeColor`.
    public func with(activeColor: Color) -> RoutingTable {
        RoutingTable(activeColor: activeColor, apps: apps)
    }

    /// The same table with the splits of the apps `transform` is given (by app name).
    public func with(splits transform: (_ app: String, _ current: TrafficSplit) -> TrafficSplit) -> RoutingTable {
        RoutingTable(apps: apps.map { app in
            var app = app
            app.split = transform(app.name, app.split)
            return app
        })
    }

    /// The same table with each app's policy replaced by `transform`'s (by app name).
    public func with(policies transform: (_ app: String, _ current: AppPolicy) -> AppPolicy) -> RoutingTable {
        RoutingTable(apps: apps.map { app in
            var app = app
            app.policy = transform(app.name, app.policy)
            return app
        })
    }
}

/// Assigns each distinct upstream address a small stable integer (the index of per-loop pools),
/// and remembers the name it was first configured under (for logs and metrics).
public final class ServerRegistry: Sendable {
    private let table = Mutex<(ids: [SocketAddress: Int], names: [String])>(([:], []))

    public init() {}

    public func id(for address: SocketAddress, name: String = "") -> Int {
        table.withLock { table in
            if let existing = table.ids[address] { return existing }
            let next = table.names.count
            table.ids[address] = next
            table.names.append(name.isEmpty ? address.description : name)
            return next
        }
    }

    /// Every name by id.
    public var names: [String] { table.withLock { $0.names } }
}

/// Assigns each app name a small stable integer, so a loop can name an app in a log record
/// with four bytes.
public final class AppRegistry: Sendable {
    private let table = Mutex<(ids: [String: Int32], names: [String])>(([:], []))

    public init() {}

    public func id(for name: String) -> Int32 {
        table.withLock { table in
            if let existing = table.ids[name] { return existing }
            let next = Int32(table.names.count)
            table.ids[name] = next
            table.names.append(name)
            return next
        }
    }

    public var names: [String] { table.withLock { $0.names } }
}

/// Publishes routing tables to the data-plane loops.
///
/// The generation counter is read once per request (a plain load on x86). When it changed, the
/// loop takes the lock once and copies its own reference to the new table, so there is no
/// lock and no shared reference-count traffic per request. The table is stored before the
/// generation is bumped (release/acquire), so a loop that sees the new generation sees the new
/// table: a request parsed after `publish` returns is routed by it.
public final class RoutingPublisher: Sendable {
    private let generationCounter: Atomic<UInt64>
    private let current: Mutex<(table: RoutingTable, generation: UInt64)>

    public init(_ table: RoutingTable) {
        generationCounter = Atomic(1)
        current = Mutex((table, 1))
    }

    /// Publishes `table` and returns its generation. Safe from any thread; callers that
    /// read-modify-write (switch) go through `update`.
    @discardableResult
    public func publish(_ table: RoutingTable) -> UInt64 {
        update { _ in table }
    }

    /// Atomically derives a new table from the current one.
    @discardableResult
    public func update(_ transform: (RoutingTable) -> RoutingTable) -> UInt64 {
        current.withLock { state in
            let next = state.generation + 1
            state = (transform(state.table), next)
            generationCounter.store(next, ordering: .releasing)
            return next
        }
    }

    @inline(__always)
    public var generation: UInt64 { generationCounter.load(ordering: .acquiring) }

    public func snapshot() -> (table: RoutingTable, generation: UInt64) {
        current.withLock { $0 }
    }
}

extension RoutingPublisher {
    /// Points every app at `color` in one publish (a stack never runs mixed versions).
    /// Returns the new generation; requests parsed after this returns go to `color`.
    @discardableResult
    public func switchTo(_ color: Color) -> UInt64 {
        update { $0.with(activeColor: color) }
    }

    /// Publishes the routing of a re-read configuration, keeping each app's policy (a new app
    /// starts on the active color).
    @discardableResult
    public func reload(_ config: Config, registry: ServerRegistry) throws(ConfigError) -> UInt64 {
        let current = snapshot().table
        let table = try RoutingTable(config: config, activeColor: current.activeColor, registry: registry)
        let policies = Dictionary(current.apps.map { ($0.name, $0.policy) }, uniquingKeysWith: { first, _ in first })
        return publish(table.with(policies: { app, policy in policies[app] ?? policy }))
    }
}

extension RoutingTable {
    /// The same table with every server's routable flag recomputed (health and drain changes).
    public func withRoutability(_ isRoutable: (_ app: String, _ color: Color, _ server: ServerEntry) -> Bool) -> RoutingTable {
        let apps = apps.map { app in
            func update(_ servers: [ServerEntry], _ color: Color) -> [ServerEntry] {
                servers.map { server in
                    var copy = server
                    copy.routable = isRoutable(app.name, color, server)
                    return copy
                }
            }
            return AppRoute(name: app.name, hosts: app.hosts, pathPrefix: app.pathPrefix,
                            blue: update(app.blue, .blue), green: update(app.green, .green), policy: app.policy)
        }
        return RoutingTable(apps: apps)
    }
}
