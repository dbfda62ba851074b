// snapbench: latency of the snapshotter core in-process (no socket, no gRPC), the part of
// a call's latency that is ours alone. The over-the-socket comparison with containerd's
// overlayfs snapshotter is Benchmarks/apibench (scripts/bench-api).
import ArgumentParser
import SnapshotCore

#if canImport(Glibc)
  import Glibc
#endif

@main
struct SnapBench: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapbench", abstract: "In-process latency of prepare, mounts, commit, stat and remove.")

  @Option(help: "Root directory to create the snapshotter in (must not exist).") var root: String
  @Option(help: "Cycles of prepare/mounts/commit/stat/remove.") var iterations = 1000
  @Option(help: "Then this many stat and mounts calls of one snapshot with nothing else running (0: none).")
  var lookups = 0

  func run() throws {
    let s = try Snapshotter(root: root)
    _ = try s.prepare(key: "base-a", parent: "")
    try s.commit(name: "base", key: "base-a")
    var times: [String: [Double]] = [:]
    func timed<T>(_ op: String, _ body: () throws -> T) throws {
      let t = now()
      _ = try body()
      times[op, default: []].append(now() - t)
    }
    for i in 0..<iterations {
      try timed("prepare") { try s.prepare(key: "a\(i)", parent: "base") }
      try timed("mounts") { try s.mounts(key: "a\(i)") }
      try timed("commit") { try s.commit(name: "c\(i)", key: "a\(i)") }
      try timed("stat") { try s.stat(key: "c\(i)") }
      try timed("remove") { try s.remove(key: "c\(i)") }
    }
    if lookups > 0 {
      // The lookups alone: the cycles' background work (pool refills, recycling) is over.
      _ = try s.prepare(key: "lookups", parent: "base")
      s.drain()
      for _ in 0..<lookups {
        try timed("stat, repeated") { try s.stat(key: "lookups") }
        try timed("mounts, repeated") { try s.mounts(key: "lookups") }
      }
    }
    print("| call | p50 ms | p99 ms |\n|---|---:|---:|")
    for op in ["prepare", "mounts", "commit", "stat", "remove", "stat, repeated", "mounts, repeated"] where times[op] != nil {
      print("| \(op) | \(fmt(percentile(times[op]!, 0.5))) | \(fmt(percentile(times[op]!, 0.99))) |")
    }
  }
}

func now() -> Double {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
}

func percentile(_ xs: [Double], _ p: Double) -> Double {
  let s = xs.sorted()
  return s[min(s.count - 1, Int(Double(s.count) * p))]
}

func fmt(_ v: Double) -> String { String(format: "%.3f", v) }
