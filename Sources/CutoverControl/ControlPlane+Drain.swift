import CutoverConfig
import CutoverMetrics
import CutoverRouting
import CutoverSystem
import Foundation

/// A server as drains name it: an address within an app, in whichever color it serves.
public struct DrainKey: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var app: String
    public var server: String

    public init(app: String, server: String) {
        self.app = app
        self.server = server
    }

    /// The state file's form, "app host:port".
    public init?(entry: String) {
        let parts = entry.split(separator: " ", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        self.init(app: String(parts[0]), server: String(parts[1]))
    }

    public var entry: String { "\(app) \(server)" }
    public var description: String { entry }

    public static func < (lhs: DrainKey, rhs: DrainKey) -> Bool { lhs.entry < rhs.entry }
}

/// Who put a drain in place — HAProxy keeps the cause of every administrative state change,
/// so an operator always learns why a server takes no traffic.
public enum DrainCause: Sendable, Equatable, CustomStringConvertible {
    /// An operator's `drain` (the user the admin socket saw).
    case operatorRequest(user: String)
    /// Read back from the state file at start (the cause before the restart is not kept there).
    case stateFile

    public var description: String {
        switch self {
        case .operatorRequest(let user): return "operator \(user)"
        case .stateFile: return "state file"
        }
    }
}

/// Operator intent, kept apart from health (HAProxy's administrative × operational state):
/// routable = healthy AND not drained. Durable through the state file.
public struct DrainRegistry: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var cause: DrainCause
        /// When (the control plane's clock, ms).
        public var since: Int64

        public init(cause: DrainCause, since: Int64) {
            self.cause = cause
            self.since = since
        }
    }

    public private(set) var entries: [DrainKey: Entry] = [:]

    /// The drains a state file lists (entries that do not parse are dropped).
    public init(persisted: [String] = [], at now: Int64 = 0) {
        for key in persisted.compactMap(DrainKey.init(entry:)) { entries[key] = Entry(cause: .stateFile, since: now) }
    }

    public func contains(_ key: DrainKey) -> Bool { entries[key] != nil }

    /// Returns whether anything changed (draining a drained server keeps its first cause).
    @discardableResult
    public mutating func drain(_ key: DrainKey, cause: DrainCause, at now: Int64) -> Bool {
        guard entries[key] == nil else { return false }
        entries[key] = Entry(cause: cause, since: now)
        return true
    }

    @discardableResult
    public mutating func undrain(_ key: DrainKey) -> Bool {
        entries.removeValue(forKey: key) != nil
    }

    /// The state file's list, sorted.
    public var persisted: [String] { entries.keys.sorted().map(\.entry) }
}

/// What `drain` and `undrain` did.
public enum DrainOutcome: Sendable, Equatable {
    case done(DrainKey, drained: Bool)
    case refused(String)
}

extension ControlPlane {
    // MARK: Drain

    func isDrained(_ key: ServerKey) -> Bool {
        drains.contains(DrainKey(app: key.app, server: key.server))
    }

    /// Drains or undrains an app's server: the state file first, then routing. Serialised with
    /// switches and reloads (each writes the whole persistent state).
    func setDrained(_ drained: Bool, app: String, server: String, actor: AuditActor) -> DrainOutcome {
        let key = DrainKey(app: app, server: server)
        let outcome: DrainOutcome = switchLock.withLock {
            lock.withLock {
                // An undrain of an entry a reload left behind (its app or server is gone) is
                // allowed: otherwise only --reset-state could clear it.
                let staleEntry = !drained && drains.contains(key)
                if !staleEntry {
                    guard let appConfig = config.apps.first(where: { $0.name == app }) else { return .refused("unknown app '\(app)'") }
                    guard (appConfig.blue + appConfig.green).contains(where: { $0.description == server }) else {
                        return .refused("app \(app) has no server \(server)")
                    }
                }
                var nextDrains = drains
                if drained {
                    nextDrains.drain(key, cause: .operatorRequest(user: actor.user), at: clock())
                } else {
                    nextDrains.undrain(key)
                }
                var next = state
                next.drained = nextDrains.persisted
                next.auditAnchor = audit?.lastRecordHash
                if let successor = handedOverTo.withLock({ $0 }) {
                    return .refused("this process handed over to pid \(successor) (hot upgrade)")
                }
                if let path = config.stateFile {
                    do throws(StateFileError) {
                        try StateFile.save(next, path: path)
                    } catch where !error.newStateInPlace {
                        return .refused("the state file could not be written: \(error.description)")
                    } catch {
                        logger.log(.warning, "drain: \(error.description)")
                    }
                }
                state = next
                drains = nextDrains
                updateReadiness(at: clock())
                publishRoutabilityLocked()
                return .done(key, drained: drained)
            }
        }
        if case .done = outcome {
            appendAudit(AuditRecord(event: drained ? "drain" : "undrain", actor: actor, generation: persistentState.generation,
                                    details: ["app": app, "server": server]))
        }
        return outcome
    }
}
