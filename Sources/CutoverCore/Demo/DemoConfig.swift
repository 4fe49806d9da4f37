/// The embedded configuration of `cutover demo`: one app on every host, blue and green demo
/// upstreams on loopback.
public enum DemoConfig {
    public static func text(listen: String, bluePort: UInt16, greenPort: UInt16) -> String {
        """
        # cutover demo: embedded configuration
        listen \(listen)
        workers auto
        initial_color blue
        app demo {
            host *
            health_path /api/system/status
            verify /api/system/status
            blue 127.0.0.1:\(bluePort)
            green 127.0.0.1:\(greenPort)
        }
        """
    }
}
