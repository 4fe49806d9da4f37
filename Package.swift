// swift-tools-version:6.0
import PackageDescription

// Dependencies point down: cutover (CLI) → CutoverCore (loops, proxy, routing, config)
// → CutoverHTTP (pure codec) ; CutoverCore → CCutoverSys (the kernel headers Glibc lacks).
let package = Package(
    name: "cutover",
    products: [
        .executable(name: "cutover", targets: ["cutover"]),
    ],
    targets: [
        .target(name: "CCutoverSys"),
        .target(name: "CutoverHTTP"),
        .target(
            name: "CutoverCore",
            dependencies: ["CCutoverSys", "CutoverHTTP"]
        ),
        .executableTarget(name: "cutover", dependencies: ["CutoverCore"]),
        .testTarget(name: "CutoverHTTPTests", dependencies: ["CutoverHTTP"]),
        .testTarget(name: "CutoverCoreTests", dependencies: ["CutoverCore", "CutoverHTTP"]),
    ],
    swiftLanguageModes: [.v6]
)
