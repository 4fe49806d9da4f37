import CutoverHTTP

/// Whether a request whose upstream attempt failed before any response byte arrived may go to
/// another server of the same pool (RFC 9110 §9.2.2), and what to send there.
///
/// - Nothing of the request reached the failed connection: always safe, whatever the method.
/// - A *reused* keep-alive connection failed after taking the request: the server may have
///   closed it just before our request arrived (the race every keep-alive pool has), so an
///   idempotent, bodiless request is sent again — head only, from the start.
/// - Anything else may have had an effect upstream: the client gets a 502, never a replay.
///
/// At most `maxAttempts` attempts per request.
package struct RetryPolicy: Equatable {
    package static let maxAttempts = 3

    /// What failed, as the connection saw it.
    package struct FailedAttempt: Equatable {
        /// Request bytes the failed connection accepted.
        package var bytesSent: Int
        /// The connection came from the idle pool.
        package var reused: Bool
        package var serverID: Int

        package init(bytesSent: Int, reused: Bool, serverID: Int) {
            self.bytesSent = bytesSent
            self.reused = reused
            self.serverID = serverID
        }
    }

    package enum Decision: Equatable {
        /// Try another server; `excludingServer`: one to avoid when another is routable (a fresh
        /// connection's server just failed; a stale reused one says nothing about its server).
        /// `headOnly`: send only the request head again (the body was empty; what was sent of the
        /// head must be sent from its start).
        case retry(excludingServer: Int?, headOnly: Bool)
        case giveUp
    }

    package static func decide(_ failed: FailedAttempt, method: HTTPMethod, requestHasBody: Bool, attempts: Int) -> Decision {
        let nothingSent = failed.bytesSent == 0
        let staleReuse = failed.reused && method.isIdempotent && !requestHasBody
        guard nothingSent || staleReuse, attempts < maxAttempts else { return .giveUp }
        return .retry(excludingServer: failed.reused ? nil : failed.serverID, headOnly: !nothingSent)
    }

    /// A fresh connection that failed before carrying a byte: its server refused or did not
    /// answer the connect, which counts against it as a failed (passive) health check.
    package static func isConnectFailure(_ failed: FailedAttempt) -> Bool {
        !failed.reused && failed.bytesSent == 0
    }
}
