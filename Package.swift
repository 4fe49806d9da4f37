// swift-tools-version:6.0
import PackageDescription

// Dependencies point down: cutover (CLI) → CutoverCore (loops, proxy, routing, config)
// → CutoverHTTP (pure codec) ; CutoverCore → CCutoverSys (the kernel headers Glibc lacks).
// Release builds of the data path skip dynamic exclusivity checks: every access to a buffer
// stored in a connection object would otherwise cost a runtime call (measured with perf as
// the largest user-space item per request). Debug builds, which the tests use, keep them.
let dataPlaneSettings: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "cutover",
    products: [
        .executable(name: "cutover", targets: ["cutover"]),
        .executable(name: "cutover-bench", targets: ["cutover-bench"]),
    ],
    targets: [
        .target(name: "CCutoverSys"),
        .target(name: "CutoverHTTP", swiftSettings: dataPlaneSettings),
        .target(
            name: "CutoverCore",
            dependencies: ["CCutoverSys", "CutoverHTTP"],
            swiftSettings: dataPlaneSettings
        ),
        .executableTarget(name: "cutover", dependencies: ["CutoverCore"]),
        .executableTarget(name: "cutover-bench", dependencies: ["CutoverCore"], path: "Benchmarks/cutover-bench"),
        .testTarget(name: "CutoverHTTPTests", dependencies: ["CutoverHTTP"]),
        .target(name: "CAllocationCounter", path: "Tests/CAllocationCounter"),
        .testTarget(name: "CutoverCoreTests", dependencies: ["CutoverCore", "CutoverHTTP", "CAllocationCounter"]),
    ],
    swiftLanguageModes: [.v6]
)
