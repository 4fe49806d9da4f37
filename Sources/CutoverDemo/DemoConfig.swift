
/// The embedded configuration of `cutover demo`: one app on every host, blue and green demo
/// upstreams on loopback, the admin socket, state file and audit log of the sample config
/// (`conf/run/…` when started from the repository, so `cutover status` finds the demo), an
/// access log and /metrics, a preview listener, a sticky cookie for canaries, and short health
/// windows so the runbook can be followed in seconds.
public enum DemoConfig {
    /// `tls`: a TLS listener and the certificate and key files it serves (`cutover demo --tls`).
    public static func text(listen: String, bluePort: UInt16, greenPort: UInt16, metricsListen: String = "127.0.0.1:9108",
                            previewListen: String? = "127.0.0.1:8081", tls: (listen: String, chain: String, key: String)? = nil) -> String {
        """
        # cutover demo: embedded configuration
        listen \(listen)
        \(tls.map { "listen \($0.listen) tls\ntls {\n    certificate \($0.chain) \($0.key)\n    default_certificate localhost\n}" } ?? "")
        \(previewListen.map { "preview_listen \($0)" } ?? "")
        workers auto
        admin_socket run/cutover.sock
        state_file run/cutover.state
        audit_log run/audit.log
        access_log run/access.log
        metrics_listen \(metricsListen)
        initial_color blue
        health {
            interval 500ms
            timeout 500ms
            rise 2
            fall 2
            ready_after 3s
            min_healthy 1
        }
        gate {
            window 1m
            max_5xx_rate 1%
            max_p95_ratio 1.5
            max_shadow_diff_rate 1%
            min_requests 100
        }
        app demo {
            host *
            health_path /api/system/status
            verify /api/system/status /
            sticky cookie cutover_id
            blue 127.0.0.1:\(bluePort)
            green 127.0.0.1:\(greenPort)
        }
        """
    }
}
