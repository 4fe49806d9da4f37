import CutoverConfig
import CutoverMetrics
import CutoverSystem
import Foundation

struct SwitchResultKey: Hashable, Sendable, Comparable {
    let command: String  // switch | rollback
    let result: String   // ok | refused | failed

    static func < (lhs: SwitchResultKey, rhs: SwitchResultKey) -> Bool { (lhs.command, lhs.result) < (rhs.command, rhs.result) }
}

/// The control plane's side of the metrics: colors, readiness and every configured server.
struct ControlFigures: Sendable {
    struct Server: Sendable {
        let app: String
        let color: Color
        let name: String
        let id: Int
        let up: Bool
    }

    let active: Color
    let generation: Int
    let ready: [Color: Bool]
    let servers: [Server]
    let gate: GateThresholds?
    /// Per app: the candidate's share in basis points (the stable color takes the rest).
    var candidateShares: [(app: String, basisPoints: Int)] = []
    /// Per app: the mirror share in basis points.
    var mirrorShares: [(app: String, basisPoints: Int)] = []
    /// Pinned values per app and color, and whether a rollback suspended them.
    var pinCounts: [(app: String, color: Color, suspended: Bool, values: Int)] = []

    var apps: [String] {
        var seen = Set<String>()
        return servers.map(\.app).filter { seen.insert($0).inserted }
    }
}

extension ControlPlane {
    static let reportedPercentiles: [(label: String, value: Double)] = [
        ("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99), ("p99.9", 99.9),
    ]

    // MARK: stats

    /// `stats [10s|1m|5m|total]`: per app and color, requests, rate, outcomes, 5xx rate and
    /// latency percentiles of the window.
    func statsReport(_ window: WindowedStats.Window) -> JSON {
        guard let source = attachedDataPlane.source else {
            return ["ok": false, "error": "the data plane is not running"]
        }
        let control = controlFigures()
        let snapshot = source.snapshot(window, false)
        let span = snapshot.span(since: source.startedNs)
        var rows: [JSON] = []
        for app in control.apps {
            for color in Color.allCases {
                rows.append(Self.statsRow(app: app, color: color, active: color == control.active,
                                          figures: snapshot.figures(app: app, color: color), span: span))
            }
        }
        // Preview traffic apart: it is never a canary's evidence.
        var preview: [JSON] = []
        for key in snapshot.windowFigures.keys.sorted() where key.listener == .preview {
            preview.append(Self.statsRow(app: key.app, color: key.color, active: false, figures: snapshot.windowFigures[key]!, span: span))
        }
        var unrouted: [(String, JSON)] = []
        for (code, count) in snapshot.unroutedStatusCodes.enumerated() where count > 0 {
            unrouted.append((String(code), .int(Int64(count))))
        }
        var shadow: [JSON] = []
        for app in control.apps {
            guard let figures = snapshot.shadow[app] else { continue }
            shadow.append(Self.shadowRow(app: app, figures: figures))
        }
        var reply: [(String, JSON)] = [
            ("ok", true), ("window", .string(window.rawValue)), ("span_s", .double(Self.rounded(span, 3))),
            ("active", .string(control.active.rawValue)), ("apps", .array(rows)), ("preview", .array(preview)),
            ("unrouted", .object(unrouted)), ("shadow", .array(shadow)),
            ("pin_fallbacks", .object(snapshot.pinFallbacks.sorted { $0.key < $1.key }.map { ($0.key, .int(Int64($0.value))) })),
        ]
        if snapshot.loopsMissing > 0 { reply.append(("loops_missing", .int(Int64(snapshot.loopsMissing)))) }
        return .object(reply)
    }

    static func statsRow(app: String, color: Color, active: Bool, figures: WindowedStats.Figures, span: Double) -> JSON {
        var errors: [(String, JSON)] = []
        for kind in UpstreamErrorCounts.kinds { errors.append((kind.label, .int(Int64(figures.count(kind))))) }
        var latency: [(String, JSON)] = []
        for (label, value) in reportedPercentiles {
            latency.append((label, .int(Int64(figures.latency.percentile(value)))))
        }
        latency.append(("max", .int(Int64(figures.latency.count == 0 ? 0 : figures.latency.max))))
        latency.append(("mean", .int(Int64(figures.latency.mean.rounded()))))
        var row: [(String, JSON)] = [
            ("app", .string(app)), ("color", .string(color.rawValue)), ("active", .bool(active)),
            ("requests", .int(Int64(figures.requests))), ("rps", .double(rounded(Double(figures.requests) / span, 1))),
        ]
        for outcome in [WindowedStats.Outcome.informational, .success, .redirect, .clientError, .serverError] {
            row.append((outcome.label, .int(Int64(figures.count(outcome)))))
        }
        row += [
            ("upstream_errors", .object(errors)),
            ("5xx_rate", .double(rounded(figures.serverErrorRate, 6))),
            ("latency_us", .object(latency)),
            ("upstream_mean_us", .int(Int64(figures.upstreamMeanMicros.rounded()))),
            ("bytes_in", .int(Int64(figures.bytesIn))), ("bytes_out", .int(Int64(figures.bytesOut))),
        ]
        return .object(row)
    }

    /// The shadow diff of one app: copies, comparisons, mismatches by field against the noise,
    /// the headers that differ, and both sides' latencies.
    static func shadowRow(app: String, figures: ShadowFigures) -> JSON {
        let counts = figures.counts
        let headers: [JSON] = figures.headers.sorted { $0.value.candidate > $1.value.candidate || ($0.value.candidate == $1.value.candidate && $0.key < $1.key) }
            .prefix(20).map { ["name": .string($0.key), "candidate": .int(Int64($0.value.candidate)), "noise": .int(Int64($0.value.noise))] }
        return ["app": .string(app), "mirrored": .int(Int64(counts.mirrored)),
                "skipped": ["method": .int(Int64(counts.skippedMethod)), "body": .int(Int64(counts.skippedBody))],
                "dropped": .int(Int64(counts.dropped)), "candidate_failed": .int(Int64(counts.candidateFailed)),
                "primary_failed": .int(Int64(counts.primaryFailed)), "compared": .int(Int64(counts.compared)),
                "mismatches": ["status": .int(Int64(counts.statusMismatches)), "headers": .int(Int64(counts.headerMismatches)),
                               "body": .int(Int64(counts.bodyMismatches))],
                "noise": ["compared": .int(Int64(counts.noiseCompared)), "status": .int(Int64(counts.noiseStatusMismatches)),
                          "headers": .int(Int64(counts.noiseHeaderMismatches)), "body": .int(Int64(counts.noiseBodyMismatches))],
                "diff_rate": .double(rounded(figures.diffRate, 6)),
                "diff_rates": ["status": .double(rounded(figures.statusDiffRate, 6)), "headers": .double(rounded(figures.headerDiffRate, 6)),
                               "body": .double(rounded(figures.bodyDiffRate, 6)),
                               "candidate_failed": .double(rounded(figures.candidateFailureRate, 6))],
                "headers": .array(headers),
                "latency_us": ["candidate_p50": .int(Int64(figures.candidateLatency.percentile(50))),
                               "candidate_p95": .int(Int64(figures.candidateLatency.percentile(95))),
                               "primary_p50": .int(Int64(figures.primaryLatency.percentile(50))),
                               "primary_p95": .int(Int64(figures.primaryLatency.percentile(95)))]]
    }

    static func rounded(_ value: Double, _ places: Int) -> Double {
        let scale = pow(10, Double(places))
        return (value * scale).rounded() / scale
    }

    // MARK: Gate thresholds

    /// The traffic part of the switch gate: for each app whose `target` pool served at least
    /// `min_requests` in the gate's window, its 5xx rate and its p95 against the active
    /// color's over the same window. Apps whose target saw too little traffic are not judged (a
    /// color that has served nothing yet has nothing to show); the figures are named in every
    /// refusal. Today a color serves traffic only while active, so this judges a switch back to
    /// a color that was active within the window; preview and canary routes will give a new
    /// color traffic before its switch.
    func gateThresholdProblems(target: Color, active: Color) -> [String] {
        let control = controlFigures()
        guard let gate = control.gate else { return [] }
        // Thresholds that cannot be evaluated refuse (force overrides): never pass blind.
        guard let source = attachedDataPlane.source else {
            return ["gate thresholds: no traffic figures (the data plane is not running)"]
        }
        let snapshot = source.snapshot(gate.window, false)
        if snapshot.loopsMissing > 0 {
            return ["gate thresholds: traffic figures incomplete (\(snapshot.loopsMissing) worker loop(s) did not answer in time)"]
        }
        var problems: [String] = []
        let over = "over the last \(gate.window.rawValue)"
        if let limit = gate.maxShadowDiffRate {
            for app in control.apps {
                guard let shadow = snapshot.shadow[app], shadow.judged >= UInt64(gate.minRequests) else { continue }
                if shadow.diffRate > limit {
                    let failures = shadow.counts.candidateFailed > 0
                        ? ", \(Self.percent(shadow.candidateFailureRate)) of copies failed on the candidate" : ""
                    problems.append("app \(app): shadow diff rate \(Self.percent(shadow.diffRate)) \(over) "
                                    + "(status \(Self.percent(shadow.statusDiffRate)), headers \(Self.percent(shadow.headerDiffRate)), "
                                    + "body \(Self.percent(shadow.bodyDiffRate)) beyond noise\(failures), \(shadow.counts.compared) compared) "
                                    + "exceeds max_shadow_diff_rate \(Self.percent(limit))")
                }
            }
        }
        for app in control.apps {
            let candidate = snapshot.figures(app: app, color: target)
            guard candidate.requests >= UInt64(gate.minRequests) else { continue }
            if let limit = gate.max5xxRate, candidate.serverErrorRate > limit {
                let errors = candidate.count(.serverError) + candidate.upstreamErrors
                problems.append("app \(app): \(target.rawValue) 5xx rate \(Self.percent(candidate.serverErrorRate)) \(over) "
                                + "(\(errors) of \(candidate.requests) requests) exceeds max_5xx_rate \(Self.percent(limit))")
            }
            if let ratio = gate.maxP95Ratio {
                let baseline = snapshot.figures(app: app, color: active)
                guard baseline.requests >= UInt64(gate.minRequests) else { continue }
                let targetP95 = Double(candidate.latency.percentile(95))
                let activeP95 = Double(max(1, baseline.latency.percentile(95)))
                if targetP95 > activeP95 * ratio {
                    problems.append("app \(app): \(target.rawValue) p95 \(Self.milliseconds(targetP95)) \(over) is "
                                    + "\(String(format: "%.2f", targetP95 / activeP95))× \(active.rawValue)'s \(Self.milliseconds(activeP95)), "
                                    + "above max_p95_ratio \(String(format: "%.2f", ratio)) "
                                    + "(\(candidate.requests) and \(baseline.requests) requests)")
                }
            }
        }
        return problems
    }

    static func percent(_ fraction: Double) -> String { String(format: "%.2f%%", fraction * 100) }
    static func milliseconds(_ micros: Double) -> String { String(format: "%.2f ms", micros / 1000) }
}

extension ControlPlane {
    // MARK: Prometheus

    /// Every metric in text exposition format 0.0.4 (`GET /metrics`). Nil when a loop did not
    /// answer in time: counters missing a loop's share would look like a reset to Prometheus
    /// (and spike every `rate()`), so such a scrape fails instead.
    public func prometheusExposition() -> String? {
        let control = controlFigures()
        let (link, counters) = attachedDataPlane
        let snapshot = link?.snapshot(.total, true)
        if let snapshot, snapshot.loopsMissing > 0 { return nil }
        // Names by id from the registry, which keeps servers a reload removed: their series
        // keep their label.
        let registered = registry.names
        func serverName(_ id: Int) -> String { id >= 0 && id < registered.count ? registered[id] : "#\(id)" }
        var out = PrometheusText()

        // Each family whole, HELP and TYPE first: scrapers reject interleaved families.
        let totals = snapshot.map { snapshot in snapshot.totals.keys.sorted().map { ($0, snapshot.totals[$0]!) } } ?? []
        out.family("cutover_requests_total", .counter,
                   "Requests routed to an app, by app, color and the status code sent (499: the client left before a response).")
        for (key, figures) in totals {
            for (code, count) in figures.statusCodes.enumerated() where count > 0 {
                out.sample("cutover_requests_total", [("app", key.app), ("color", key.color.rawValue), ("listener", key.listener.rawValue), ("code", String(code))], Double(count))
            }
        }
        out.family("cutover_request_duration_seconds", .histogram,
                   "First byte of the request head to the last byte of the response, by app and color.")
        for (key, figures) in totals {
            out.histogram("cutover_request_duration_seconds", [("app", key.app), ("color", key.color.rawValue), ("listener", key.listener.rawValue)],
                          bounds: WindowedStats.durationBoundsMicros.map { Double($0) / 1e6 },
                          counts: figures.durationBuckets, sum: Double(figures.figures.latency.sum) / 1e6)
        }
        out.family("cutover_bytes_total", .counter, "Request (in) and response (out) bytes, heads included, by app and color.")
        for (key, figures) in totals {
            let labels = [("app", key.app), ("color", key.color.rawValue), ("listener", key.listener.rawValue)]
            out.sample("cutover_bytes_total", labels + [("direction", "in")], Double(figures.figures.bytesIn))
            out.sample("cutover_bytes_total", labels + [("direction", "out")], Double(figures.figures.bytesOut))
        }
        out.family("cutover_request_errors_total", .counter,
                   "Requests ended by an upstream failure, answered 502/504 or cut off mid-response (then counted under the status sent), by kind.")
        for (key, figures) in totals {
            for kind in UpstreamErrorCounts.kinds where figures.figures.count(kind) > 0 {
                out.sample("cutover_request_errors_total", [("app", key.app), ("color", key.color.rawValue), ("listener", key.listener.rawValue), ("kind", kind.label)],
                           Double(figures.figures.count(kind)))
            }
        }
        out.family("cutover_upstream_errors_total", .counter,
                   "Upstream failures by server and kind (connect_failure, reset, timeout, invalid_response), retried attempts included.")
        if let snapshot {
            for key in snapshot.serverErrors.keys.sorted() {
                for (serverID, counts) in snapshot.serverErrors[key]!.sorted(by: { $0.key < $1.key }) {
                    let server = serverName(serverID)
                    for kind in UpstreamErrorCounts.kinds where counts.count(kind) > 0 {
                        out.sample("cutover_upstream_errors_total",
                                   [("app", key.app), ("color", key.color.rawValue), ("listener", key.listener.rawValue), ("server", server), ("kind", kind.label)],
                                   Double(counts.count(kind)))
                    }
                }
            }
        }
        out.family("cutover_unrouted_requests_total", .counter,
                   "Requests answered without an app: malformed (400, 408, 413, 431…) or matching no app (404).")
        for (code, count) in (snapshot?.unroutedStatusCodes ?? []).enumerated() where count > 0 {
            out.sample("cutover_unrouted_requests_total", [("code", String(code))], Double(count))
        }

        out.family("cutover_upstream_up", .gauge, "1 when the server passes its health checks, by app, color and server.")
        for server in control.servers {
            out.sample("cutover_upstream_up", [("app", server.app), ("color", server.color.rawValue), ("server", server.name)],
                       server.up ? 1 : 0)
        }
        out.family("cutover_split_weight", .gauge, "Share of an app's requests each color takes, in percent (canary weights).")
        for share in control.candidateShares {
            out.sample("cutover_split_weight", [("app", share.app), ("color", control.active.rawValue)],
                       Double(10_000 - share.basisPoints) / 100)
            out.sample("cutover_split_weight", [("app", share.app), ("color", control.active.other.rawValue)], Double(share.basisPoints) / 100)
        }
        out.family("cutover_pinned_values", .gauge, "Pinned header or cookie values by app and color; state suspended after a rollback.")
        for pins in control.pinCounts {
            out.sample("cutover_pinned_values", [("app", pins.app), ("color", pins.color.rawValue), ("state", pins.suspended ? "suspended" : "active")],
                       Double(pins.values))
        }
        out.family("cutover_pin_fallbacks_total", .counter,
                   "Pinned requests sent to the stable color because the pinned color had no routable server.")
        for app in control.apps {
            out.sample("cutover_pin_fallbacks_total", [("app", app)], Double(snapshot?.pinFallbacks[app] ?? 0))
        }
        let shadows = control.apps.compactMap { app in snapshot?.shadow[app].map { (app, $0) } }
        func shadowCounter(_ name: String, _ help: String, _ value: (ShadowFigures.Counts) -> UInt64) {
            out.family(name, .counter, help)
            for (app, figures) in shadows { out.sample(name, [("app", app)], Double(value(figures.counts))) }
        }
        shadowCounter("cutover_shadow_mirrored_total", "Requests copied to the candidate.") { $0.mirrored }
        out.family("cutover_shadow_skipped_total", .counter, "Requests of the mirrored share not copied, by reason (method, body).")
        for (app, figures) in shadows {
            out.sample("cutover_shadow_skipped_total", [("app", app), ("reason", "method")], Double(figures.counts.skippedMethod))
            out.sample("cutover_shadow_skipped_total", [("app", app), ("reason", "body")], Double(figures.counts.skippedBody))
        }
        shadowCounter("cutover_shadow_dropped_total", "Copies dropped because mirror_max_inflight copies were in flight.") { $0.dropped }
        shadowCounter("cutover_shadow_candidate_failed_total", "Copies whose candidate failed (connect, reset, timeout, invalid).") { $0.candidateFailed }
        shadowCounter("cutover_shadow_compared_total", "Copies compared with the primary's response.") { $0.compared }
        out.family("cutover_shadow_mismatches_total", .counter,
                   "Compared copies that differed from the primary, by field; against=noise: a second stable server differed.")
        for (app, figures) in shadows {
            let counts = figures.counts
            for (field, candidate, noise) in [("status", counts.statusMismatches, counts.noiseStatusMismatches),
                                              ("headers", counts.headerMismatches, counts.noiseHeaderMismatches),
                                              ("body", counts.bodyMismatches, counts.noiseBodyMismatches)] {
                out.sample("cutover_shadow_mismatches_total", [("app", app), ("field", field), ("against", "candidate")], Double(candidate))
                out.sample("cutover_shadow_mismatches_total", [("app", app), ("field", field), ("against", "noise")], Double(noise))
            }
        }
        out.family("cutover_shadow_diff_rate", .gauge, "Worst field's mismatch rate beyond the noise, since start (what the gate judges over its window).")
        for (app, figures) in shadows { out.sample("cutover_shadow_diff_rate", [("app", app)], figures.diffRate) }
        out.family("cutover_mirror_percent", .gauge, "Share of the stable color's requests copied to the candidate, in percent.")
        for share in control.mirrorShares { out.sample("cutover_mirror_percent", [("app", share.app)], Double(share.basisPoints) / 100) }
        let notifications = notifier.figures
        if !notifications.targets.isEmpty {
            out.family("cutover_notify_delivered_total", .counter, "Events delivered to a notify target.")
            for target in notifications.targets { out.sample("cutover_notify_delivered_total", [("target", target.target)], Double(target.delivered)) }
            out.family("cutover_notify_failures_total", .counter, "Events a notify target did not take after every attempt.")
            for target in notifications.targets { out.sample("cutover_notify_failures_total", [("target", target.target)], Double(target.failed)) }
            out.family("cutover_notify_dropped_total", .counter, "Events dropped because the notification queue was full.")
            out.sample("cutover_notify_dropped_total", [], Double(notifications.dropped))
        }
        let certificates = tlsCertificates()
        if !certificates.isEmpty, let counters {
            let now = Double(realtimeNanoseconds()) / 1e9
            out.family("cutover_tls_certificate_expiry_seconds", .gauge, "Seconds until the certificate served for a name expires.")
            for certificate in certificates { out.sample("cutover_tls_certificate_expiry_seconds", [("name", certificate.name)], Double(certificate.expiresAt) - now) }
            out.family("cutover_tls_handshakes_total", .counter, "Completed TLS handshakes, by version and whether the session was resumed.")
            for version in DataPlaneCounters.TLSVersionLabel.allCases {
                for resumed in [false, true] {
                    out.sample("cutover_tls_handshakes_total", [("version", version.label), ("resumed", resumed ? "true" : "false")],
                               Double(counters.tlsCount(.handshake(version: version, resumed: resumed))))
                }
            }
            out.family("cutover_tls_handshake_failures_total", .counter,
                       "TLS connections that ended before their handshake did, by reason (plaintext_http: an HTTP request on the TLS port).")
            for (index, reason) in DataPlaneCounters.tlsFailureReasons.enumerated().dropFirst() {
                out.sample("cutover_tls_handshake_failures_total", [("reason", reason)], Double(counters.tlsCount(.failure(reason: index))))
            }
        }
        out.family("cutover_active_color", .gauge, "1 for the color that receives traffic.")
        for color in Color.allCases { out.sample("cutover_active_color", [("color", color.rawValue)], color == control.active ? 1 : 0) }
        out.family("cutover_color_ready", .gauge, "1 when the color passes the switch gate's readiness (min_healthy for ready_after).")
        for color in Color.allCases { out.sample("cutover_color_ready", [("color", color.rawValue)], control.ready[color] == true ? 1 : 0) }
        out.family("cutover_routing_generation", .gauge, "Generation of the published routing table (every switch adds one).")
        out.sample("cutover_routing_generation", [], Double(control.generation))
        out.family("cutover_switches_total", .counter, "Switch and rollback commands by result (ok, refused, failed).")
        let outcomes = switchOutcomeCounts
        for command in ["switch", "rollback"] {
            for result in ["ok", "refused", "failed"] {
                out.sample("cutover_switches_total", [("command", command), ("result", result)],
                           Double(outcomes[SwitchResultKey(command: command, result: result)] ?? 0))
            }
        }
        out.family("cutover_events_total", .counter,
                   "Changes and release decisions by audit event (switch, rollback, weight, pin, mirror, release_started, release_step, release_paused, auto_rollback, …), whether or not audit_log is on.")
        for (event, count) in auditEvents.withLock({ $0 }).sorted(by: { $0.key < $1.key }) {
            out.sample("cutover_events_total", [("event", event)], Double(count))
        }
        if let counters {
            out.family("cutover_local_resource_errors_total", .counter,
                       "Requests answered 503 because the proxy had no descriptor or memory for an upstream connection (never counted against a server or a color).")
            out.sample("cutover_local_resource_errors_total", [], Double(counters.localResourceFailures))
            out.family("cutover_idle_upstreams_trimmed_total", .counter, "Idle upstream connections closed because their pool took no traffic any more.")
            out.sample("cutover_idle_upstreams_trimmed_total", [], Double(counters.idleUpstreamsTrimmed))
            out.family("cutover_idle_clients_evicted_total", .counter, "Idle client connections closed at max_connections to admit new clients.")
            out.sample("cutover_idle_clients_evicted_total", [], Double(counters.idleClientsEvicted))
            out.family("cutover_inflight_requests", .gauge, "Requests in flight by the color they were routed to.")
            for color in Color.allCases { out.sample("cutover_inflight_requests", [("color", color.rawValue)], Double(counters.inflight(color))) }
        }
        if let link {
            let connections = link.connections()
            out.family("cutover_connections", .gauge, "Open connections: clients, and upstreams (idle keep-alive ones included).")
            out.sample("cutover_connections", [("side", "client")], Double(connections.clients))
            out.sample("cutover_connections", [("side", "upstream")], Double(connections.upstreams))
            out.family("cutover_access_log_dropped_total", .counter,
                       "Access log lines lost because the writer fell behind or the file refused the write.")
            out.sample("cutover_access_log_dropped_total", [], Double(link.accessLogDropped()))
        }
        return out.text
    }
}
