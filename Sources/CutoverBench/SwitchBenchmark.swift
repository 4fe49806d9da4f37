import CutoverControl
import CutoverMetrics
import CutoverConfig
import CutoverSystem
import Foundation

/// What `cutover-bench switch` measures: keep-alive load through a proxy while its active color
/// is switched N times. A **stale** answer is one from the old color to a request sent after
/// the switch command returned (cutover's contract says: never).
public struct SwitchBenchmark: Sendable {
    public enum Switcher: Sendable {
        /// cutover's admin socket: `switch <color> force reason …`.
        case adminSocket(String)
        /// Any command; `{color}` is replaced by the target color. It returning = switched.
        case command(String)
    }

    public var load: LoadOptions
    public var switcher: Switcher
    public var switches: Int
    public var intervalMs: Int
    public var firstTarget: Color = .green

    public init(load: LoadOptions, switcher: Switcher, switches: Int, intervalMs: Int) {
        self.load = load
        self.switcher = switcher
        self.switches = switches
        self.intervalMs = intervalMs
    }

    public struct Report: Sendable {
        public var load: LoadReport
        public var switches = 0
        public var switchFailures: [String] = []
        public var failedRequests = 0
        public var staleAnswers = 0
        /// Per switch: from sending the command to the first answer in the new color (µs).
        public var timeToNewColor = LatencyHistogram()
        /// How long the switch command itself took (µs).
        public var commandLatency = LatencyHistogram()
        public var insideWindows = LatencyHistogram()
        public var outsideWindows = LatencyHistogram()
        /// Answers per `timelineBucketMs` by color from the load's start, and when each switch
        /// command was sent (ms from the same start): the plot of the run.
        public var timeline = SwitchTimeline()

        public var text: String {
            func ms(_ micros: UInt64) -> String { String(format: "%.3f ms", Double(micros) / 1000) }
            return [
                "switches \(switches)  (command failures \(switchFailures.count))",
                "requests \(load.requests)  failed \(failedRequests)  stale \(staleAnswers)",
                "switch command: p50 \(ms(commandLatency.percentile(50)))  max \(ms(commandLatency.max == 0 ? 0 : commandLatency.max))",
                "command sent → first new-color answer: p50 \(ms(timeToNewColor.percentile(50)))  max \(ms(timeToNewColor.max == 0 ? 0 : timeToNewColor.max))",
                "p99 inside switch windows \(ms(insideWindows.percentile(99)))  outside \(ms(outsideWindows.percentile(99)))",
            ].joined(separator: "\n")
        }

        public var json: JSON {
            ["switches": .int(Int64(switches)), "switch_failures": .array(switchFailures.map { .string($0) }),
             "requests": .int(Int64(load.requests)), "failed": .int(Int64(failedRequests)), "stale": .int(Int64(staleAnswers)),
             "command_us_p50": .int(Int64(commandLatency.percentile(50))),
             "first_new_color_us_p50": .int(Int64(timeToNewColor.percentile(50))),
             "first_new_color_us_max": .int(Int64(timeToNewColor.count == 0 ? 0 : timeToNewColor.max)),
             "p99_inside_us": .int(Int64(insideWindows.percentile(99))), "p99_outside_us": .int(Int64(outsideWindows.percentile(99))),
             "timeline": timeline.json]
        }
    }

    /// Switches and samples, recorded during the run and judged after it: judging while the
    /// run goes on would race the recording of a switch's reply time.
    final class Timeline: @unchecked Sendable {
        struct Entry {
            var target: String
            var sentNs: Int64
            var repliedNs: Int64
        }

        let lock = NSLock()
        var startNs: Int64 = 0
        var entries: [Entry] = []
        var samples: [ResponseSample] = []
        static let windowNs: Int64 = 100_000_000  // a switch window: command sent … reply + 100 ms

        func observe(_ sample: ResponseSample) {
            lock.withLock { samples.append(sample) }
        }

        func judge(into report: inout Report) {
            lock.withLock {
                samples.sort { $0.intendedNs < $1.intendedNs }
                var firstNewColor: [Int64?] = Array(repeating: nil, count: entries.count)
                var current = -1  // index of the last switch answered before the sample was sent
                for sample in samples {
                    while current + 1 < entries.count && entries[current + 1].repliedNs <= sample.intendedNs { current += 1 }
                    if sample.error != nil || sample.status >= 500 {
                        report.failedRequests += 1
                        continue
                    }
                    let latency = UInt64(max(0, sample.completedNs - sample.intendedNs) / 1000)
                    let inWindow = entries.contains { sample.completedNs >= $0.sentNs && sample.intendedNs <= $0.repliedNs + Self.windowNs }
                    if inWindow { report.insideWindows.record(latency) } else { report.outsideWindows.record(latency) }
                    // Stale: the old color, although the switch in force had been acknowledged
                    // before the request was sent. A later switch sent before the answer came back
                    // may have been published before the proxy read the request (a busy machine
                    // delays reads): its color is right too. Only a color no table published
                    // between the request's send and its answer can have routed is stale.
                    if current >= 0, let color = sample.color, color != entries[current].target {
                        let laterSwitchToColor = entries[(current + 1)...].contains {
                            $0.target == color && $0.sentNs <= sample.completedNs
                        }
                        if !laterSwitchToColor { report.staleAnswers += 1 }
                    }
                    for index in entries.indices where sample.color == entries[index].target && sample.completedNs >= entries[index].sentNs {
                        if firstNewColor[index] == nil || sample.completedNs < firstNewColor[index]! {
                            // Only answers before the next switch count for this one.
                            if index + 1 == entries.count || sample.completedNs < entries[index + 1].sentNs {
                                firstNewColor[index] = sample.completedNs
                            }
                        }
                    }
                }
                for (index, entry) in entries.enumerated() {
                    if let first = firstNewColor[index] { report.timeToNewColor.record(UInt64((first - entry.sentNs) / 1000)) }
                }
                report.timeline = SwitchTimeline(samples: samples, switchesSentNs: entries.map(\.sentNs), startNs: startNs)
            }
        }
    }

    public func run() throws -> Report {
        let timeline = Timeline()
        var load = self.load
        let settle = 1_000
        load.durationMs = settle + switches * intervalMs + settle
        let loadResult = LoadResultBox()
        let done = DispatchSemaphore(value: 0)
        let options = load
        timeline.lock.withLock { timeline.startNs = monotonicNanoseconds() }
        Thread.detachNewThread {
            loadResult.set(Result { try LoadGenerator.run(options, observer: { timeline.observe($0) }) })
            done.signal()
        }
        usleep(UInt32(settle * 1000))
        var report = Report(load: LoadReport())
        var target = firstTarget
        for _ in 0..<switches {
            let sent = monotonicNanoseconds()
            let error = perform(target)
            let replied = monotonicNanoseconds()
            if let error {
                report.switchFailures.append(error)
            } else {
                timeline.lock.withLock {
                    timeline.entries.append(Timeline.Entry(target: target.rawValue, sentNs: sent, repliedNs: replied))
                }
                report.commandLatency.record(UInt64((replied - sent) / 1000))
                report.switches += 1
            }
            target = target.other
            usleep(UInt32(intervalMs * 1000))
        }
        done.wait()
        report.load = try loadResult.get()
        timeline.judge(into: &report)
        return report
    }

    private func perform(_ color: Color) -> String? {
        switch switcher {
        case .adminSocket(let path):
            return AdminLine.send("switch \(color.rawValue) force reason cutover-bench", to: path)
        case .command(let template):
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", template.replacingOccurrences(of: "{color}", with: color.rawValue)]
            do {
                try process.run()
                process.waitUntilExit()
            } catch {
                return "\(error)"
            }
            return process.terminationStatus == 0 ? nil : "switch command exited \(process.terminationStatus)"
        }
    }

    final class LoadResultBox: @unchecked Sendable {
        private let lock = NSLock()
        private var result: Result<LoadReport, Error>? = nil
        func set(_ value: Result<LoadReport, Error>) { lock.withLock { result = value } }
        func get() throws -> LoadReport { try lock.withLock { result! }.get() }
    }
}


/// A switch run as a plot: answers per bucket by color (by when they completed), failures
/// apart, and the moments the switch commands were sent.
public struct SwitchTimeline: Sendable {
    public var bucketMs = 10
    public var blue: [Int] = []
    public var green: [Int] = []
    public var failed: [Int] = []
    public var switchesMs: [Double] = []

    public init() {}

    init(samples: [ResponseSample], switchesSentNs: [Int64], startNs: Int64) {
        let bucketNs = Int64(bucketMs) * 1_000_000
        let last = samples.map(\.completedNs).max() ?? startNs
        let count = Int(max(0, last - startNs) / bucketNs) + 1
        blue = Array(repeating: 0, count: count)
        green = Array(repeating: 0, count: count)
        failed = Array(repeating: 0, count: count)
        for sample in samples {
            let index = Int(max(0, sample.completedNs - startNs) / bucketNs)
            if sample.error != nil || sample.status >= 500 {
                failed[index] += 1
            } else if sample.color == "blue" {
                blue[index] += 1
            } else if sample.color == "green" {
                green[index] += 1
            }
        }
        switchesMs = switchesSentNs.map { Double($0 - startNs) / 1e6 }
    }

    public var json: JSON {
        ["bucket_ms": .int(Int64(bucketMs)), "blue": .array(blue.map { .int(Int64($0)) }), "green": .array(green.map { .int(Int64($0)) }),
         "failed": .array(failed.map { .int(Int64($0)) }), "switches_ms": .array(switchesMs.map { .double(($0 * 1000).rounded() / 1000) })]
    }

    public init?(json: JSON) {
        guard let bucket = json["bucket_ms"]?.intValue, let blue = json["blue"]?.arrayValue, let green = json["green"]?.arrayValue,
              let failed = json["failed"]?.arrayValue, let switches = json["switches_ms"]?.arrayValue else { return nil }
        bucketMs = Int(bucket)
        self.blue = blue.map { Int($0.intValue ?? 0) }
        self.green = green.map { Int($0.intValue ?? 0) }
        self.failed = failed.map { Int($0.intValue ?? 0) }
        switchesMs = switches.compactMap(\.doubleValue)
    }

    /// The part from `fromMs` to `toMs` after the first switch was sent (the whole run when
    /// nothing was switched), as chart buckets and switch marks.
    public func window(fromMs: Int, toMs: Int) -> (buckets: [(blue: Int, green: Int, failed: Int)], marks: [Int]) {
        let origin = switchesMs.first ?? 0
        let first = max(0, Int((origin + Double(fromMs)) / Double(bucketMs)))
        let end = min(blue.count, Int((origin + Double(toMs)) / Double(bucketMs)))
        guard first < end else { return ([], []) }
        let buckets = (first..<end).map { (blue[$0], green[$0], failed[$0]) }
        let marks = switchesMs.map { Int($0 / Double(bucketMs)) - first }.filter { $0 >= 0 && $0 < buckets.count }
        return (buckets, marks)
    }
}
