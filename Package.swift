// swift-tools-version:6.0
import PackageDescription

// The targets are the architecture; each arrow points down, and the compiler enforces it:
//
//   cutover (CLI) ─→ CutoverRuntime ─→ CutoverProxy (data plane) and CutoverControl (control plane)
//   CutoverProxy   ─→ CutoverLoop, CutoverHTTP (pure codec), CutoverRouting, CutoverMetrics
//   CutoverControl ─→ CutoverLoop (its own event loop), CutoverRouting, CutoverMetrics, CutoverHTTP
//   CutoverMetrics ─→ CutoverRouting ─→ CutoverConfig ─→ CutoverSystem ─→ CCutoverSys
//   CutoverLoop    ─→ CutoverSystem, CutoverHTTP
//   CutoverProxy   ─→ CutoverTLS ─→ CCutoverTLS ─→ COpenSSL (the system libssl)
//   CutoverControl, cutover, CutoverBench ─→ CutoverViews (pure: figures to terminal lines, HTML, SVG) ─→ CutoverSystem
//   CutoverDemo, CutoverBench (tools) ─→ CutoverLoop, CutoverHTTP; the bench also drives the admin socket
//
// The data plane (CutoverProxy) and the control plane (CutoverControl) never import each
// other: they meet at the routing snapshot (CutoverRouting) and the figures and the link
// (CutoverMetrics). Only CutoverSystem makes syscalls.
//
// Release builds of the data path skip dynamic exclusivity checks: every access to a buffer
// stored in a connection object would otherwise cost a runtime call (measured with perf as
// the largest user-space item per request). Cross-module optimisation makes the bodies of the
// small functions a request calls across targets (buffers, loop clock, routing match,
// recording) available to their callers, as they were when all of it was one module.
let dataPlaneSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release)),
]

let package = Package(
    name: "cutover",
    products: [
        .executable(name: "cutover", targets: ["cutover"]),
        .executable(name: "cutover-bench", targets: ["cutover-bench"]),
    ],
    targets: [
        // The kernel: every syscall, behind one door.
        .target(name: "CCutoverSys"),
        .target(name: "CutoverSystem", dependencies: ["CCutoverSys"], swiftSettings: dataPlaneSettings),
        // TLS: the system OpenSSL (libssl-dev), our C for its macros and callbacks, and the
        // Swift that loads certificates and runs records on the loops' sockets.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .target(name: "CCutoverTLS", dependencies: ["COpenSSL"]),
        .target(name: "CutoverTLS", dependencies: ["CCutoverTLS", "CutoverConfig", "CutoverSystem"], swiftSettings: dataPlaneSettings),
        // The pure HTTP/1.1 codec: no sockets, no Foundation.
        .target(name: "CutoverHTTP", swiftSettings: dataPlaneSettings),
        .target(name: "CutoverLoop", dependencies: ["CutoverSystem", "CutoverHTTP"], swiftSettings: dataPlaneSettings),
        .target(name: "CutoverConfig", dependencies: ["CutoverSystem"], swiftSettings: dataPlaneSettings),
        .target(name: "CutoverRouting", dependencies: ["CutoverConfig", "CutoverSystem"], swiftSettings: dataPlaneSettings),
        .target(
            name: "CutoverMetrics",
            dependencies: ["CutoverRouting", "CutoverConfig", "CutoverSystem"],
            swiftSettings: dataPlaneSettings
        ),
        // The operator views as pure functions: figures in, terminal lines, HTML or SVG out.
        .target(name: "CutoverViews", dependencies: ["CutoverSystem"]),
        // The data plane.
        .target(
            name: "CutoverProxy",
            dependencies: ["CutoverLoop", "CutoverHTTP", "CutoverRouting", "CutoverMetrics", "CutoverConfig", "CutoverSystem",
                           "CutoverTLS"],
            swiftSettings: dataPlaneSettings
        ),
        // The control plane.
        .target(
            name: "CutoverControl",
            dependencies: ["CutoverLoop", "CutoverRouting", "CutoverMetrics", "CutoverConfig", "CutoverSystem", "CutoverHTTP",
                           "CutoverRelease", "CutoverTLS", "CutoverViews"]
        ),
        // Wiring: starts both planes from a config and links them.
        // Release plans as values: the sequential tests and the plan's state machine, no I/O.
        .target(name: "CutoverRelease", dependencies: ["CutoverConfig"]),
        .target(name: "CutoverRuntime", dependencies: ["CutoverProxy", "CutoverControl", "CutoverConfig", "CutoverSystem", "CutoverTLS"]),
        // Tools beside the product.
        .target(
            name: "CutoverDemo",
            dependencies: ["CutoverLoop", "CutoverHTTP", "CutoverConfig", "CutoverSystem"],
            swiftSettings: dataPlaneSettings
        ),
        .target(
            name: "CutoverBench",
            dependencies: ["CutoverControl", "CutoverMetrics", "CutoverLoop", "CutoverHTTP", "CutoverConfig", "CutoverSystem", "CutoverViews"],
            swiftSettings: dataPlaneSettings
        ),
        .executableTarget(
            name: "cutover",
            dependencies: ["CutoverRuntime", "CutoverControl", "CutoverDemo", "CutoverRouting", "CutoverConfig", "CutoverSystem",
                           "CutoverTLS", "CutoverViews"]
        ),
        .executableTarget(name: "cutover-bench", dependencies: ["CutoverBench", "CutoverDemo", "CutoverConfig"], path: "Benchmarks/cutover-bench"),

        .target(name: "CAllocationCounter", path: "Tests/CAllocationCounter"),
        .target(name: "CutoverTestSupport", path: "Tests/CutoverTestSupport"),
        .testTarget(name: "CutoverSystemTests", dependencies: ["CutoverSystem"]),
        .testTarget(name: "CutoverHTTPTests", dependencies: ["CutoverHTTP"]),
        .testTarget(name: "CutoverLoopTests", dependencies: ["CutoverLoop"]),
        .testTarget(name: "CutoverRoutingTests", dependencies: ["CutoverRouting", "CutoverConfig", "CutoverSystem", "CutoverTestSupport"]),
        .testTarget(name: "CutoverProxyTests", dependencies: ["CutoverProxy", "CutoverHTTP", "CutoverMetrics"]),
        .testTarget(name: "CutoverConfigTests", dependencies: ["CutoverConfig"]),
        .testTarget(name: "CutoverTLSTests", dependencies: ["CutoverTLS", "CutoverConfig", "CutoverTestSupport"]),
        .testTarget(name: "CutoverReleaseTests", dependencies: ["CutoverRelease", "CutoverConfig", "CutoverTestSupport"]),
        .testTarget(name: "CutoverMetricsTests", dependencies: ["CutoverMetrics", "CutoverTestSupport"]),
        .testTarget(name: "CutoverViewsTests", dependencies: ["CutoverViews", "CutoverSystem"]),
        .testTarget(name: "CutoverControlTests", dependencies: ["CutoverControl", "CutoverConfig", "CutoverSystem"]),
        // Loopback tests: real sockets on 127.0.0.1, real upstreams, the built binaries.
        .testTarget(
            name: "CutoverIntegrationTests",
            dependencies: [
                "CutoverRuntime", "CutoverProxy", "CutoverControl", "CutoverDemo", "CutoverMetrics", "CutoverRouting",
                "CutoverConfig", "CutoverSystem", "CAllocationCounter", "CutoverTestSupport", "CutoverTLS",
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
