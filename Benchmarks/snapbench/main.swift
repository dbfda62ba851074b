// snapbench: per-call latency of the containerd snapshots API, measured over the unix
// socket by one client against several servers in the same run (snapshotd and
// containerd's own overlayfs snapshotter served by Benchmarks/refserver), interleaved in
// rounds so that machine noise falls on both alike. See scripts/bench-api.
import ArgumentParser
import SnapshotAPI

#if canImport(Glibc)
import Glibc
#endif

@main
struct SnapBench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "snapbench", abstract: "Latency of snapshot API calls, side by side.")

  @Option(name: .customLong("server"), help: "NAME=SOCKET of a server to measure (repeatable; the first is the baseline's peer).")
  var servers: [String] = []

  @Option(help: "Iterations of prepare/mounts/commit/stat/remove per server.") var iterations = 1000
  @Option(help: "Iterations per round before switching server.") var round = 50
  @Option(help: "Depth of the chain for the deep-prepare case.") var depth = 32
  @Option(help: "Snapshots in the store for the scale case (0 skips it).") var scale = 10_000
  @Option(help: "Which servers the scale case runs on (NAME, repeatable; default the first).") var scaleServer: [String] = []

  func run() async throws {
    let targets = servers.map { s -> (String, String) in
      let parts = s.split(separator: "=", maxSplits: 1).map(String.init)
      return (parts[0], parts.count > 1 ? parts[1] : parts[0])
    }
    guard !targets.isEmpty else { throw ValidationError("give at least one --server NAME=SOCKET") }

    // 1. The basic cycle, interleaved by rounds.
    var samples: [String: [String: [Double]]] = [:]
    try await withClients(targets) { clients in
      for (name, c) in clients {
        _ = try await c.prepare(.with { $0.key = "bench-base-a" })
        _ = try await c.commit(.with { $0.name = "bench-base"; $0.key = "bench-base-a" })
        samples[name] = [:]
        _ = try await cycle(c, id: "warmup", parent: "bench-base", into: &samples[name]!)
        samples[name] = [:]
      }
      var done = 0
      while done < iterations {
        for (name, c) in clients {
          for i in done..<min(done + round, iterations) {
            try await cycle(c, id: "\(i)", parent: "bench-base", into: &samples[name]!)
          }
        }
        done += round
      }

      // 2. Prepare on top of a deep chain.
      for (name, c) in clients {
        var parent = ""
        for l in 0..<depth {
          _ = try await c.prepare(.with { $0.key = "chain-\(l)-a"; $0.parent = parent })
          _ = try await c.commit(.with { $0.name = "chain-\(l)"; $0.key = "chain-\(l)-a" })
          parent = "chain-\(l)"
        }
        var times: [Double] = []
        for i in 0..<max(50, iterations / 10) {
          let t = now()
          _ = try await c.prepare(.with { $0.key = "deep-\(i)"; $0.parent = parent })
          times.append(now() - t)
          _ = try await c.remove(.with { $0.key = "deep-\(i)" })
        }
        samples[name]!["prepare (\(depth) layers)"] = times
      }
    }

    print("\n## Per-call latency, milliseconds (\(iterations) calls each, one client, same run)\n")
    let ops = ["prepare", "mounts", "commit", "stat", "remove", "prepare (\(depth) layers)"]
    var header = "| call |"
    var rule = "|---|"
    for (name, _) in targets {
      header += " \(name) p50 | \(name) p99 |"
      rule += "---:|---:|"
    }
    if targets.count > 1 {
      for (name, _) in targets.dropFirst() {
        header += " \(targets[0].0)/\(name) p50 | p99 |"
        rule += "---:|---:|"
      }
    }
    print(header)
    print(rule)
    for op in ops {
      var line = "| \(op) |"
      for (name, _) in targets {
        let s = samples[name]?[op] ?? []
        line += " \(fmt(percentile(s, 0.5))) | \(fmt(percentile(s, 0.99))) |"
      }
      if targets.count > 1 {
        let base = samples[targets[0].0]?[op] ?? []
        for (name, _) in targets.dropFirst() {
          let other = samples[name]?[op] ?? []
          line += " \(ratio(percentile(base, 0.5), percentile(other, 0.5))) | \(ratio(percentile(base, 0.99), percentile(other, 0.99))) |"
        }
      }
      print(line)
    }

    // 3. Scale: prepare latency with 100 and with `scale` snapshots in the store.
    if scale > 0 {
      let names = scaleServer.isEmpty ? [targets[0].0] : scaleServer
      print("\n## Prepare latency against store size (ms)\n")
      print("| server | snapshots | p50 | p99 |")
      print("|---|---:|---:|---:|")
      for (name, socket) in targets where names.contains(name) {
        let connection = try SnapshotsConnection(socketPath: socket)
        let c = connection.client
        do {
          var have = 0
          var results: [(Int, [Double])] = []
          for target in [100, scale] {
            while have < target {
              _ = try await c.prepare(.with { $0.key = "fill-\(have)-a"; $0.parent = "bench-base" })
              _ = try await c.commit(.with { $0.name = "fill-\(have)"; $0.key = "fill-\(have)-a" })
              have += 1
            }
            var times: [Double] = []
            for i in 0..<max(100, iterations / 5) {
              let t = now()
              _ = try await c.prepare(.with { $0.key = "scale-\(target)-\(i)"; $0.parent = "bench-base" })
              times.append(now() - t)
              _ = try await c.remove(.with { $0.key = "scale-\(target)-\(i)" })
            }
            results.append((target, times))
          }
          for (n, times) in results {
            print("| \(name) | \(n) | \(fmt(percentile(times, 0.5))) | \(fmt(percentile(times, 0.99))) |")
          }
          let r = percentile(results[1].1, 0.5) / percentile(results[0].1, 0.5)
          print("\n\(name): p50 with \(scale) snapshots is \(String(format: "%.2f", r))x of with 100")
        }
        await connection.close()
      }
    }
  }

  /// prepare → mounts → commit → stat → remove, each timed.
  func cycle(_ c: SnapshotsClient, id: String, parent: String, into s: inout [String: [Double]]) async throws {
    var t = now()
    _ = try await c.prepare(.with { $0.key = "a-\(id)"; $0.parent = parent })
    s["prepare", default: []].append(now() - t)
    t = now()
    _ = try await c.mounts(.with { $0.key = "a-\(id)" })
    s["mounts", default: []].append(now() - t)
    t = now()
    _ = try await c.commit(.with { $0.name = "c-\(id)"; $0.key = "a-\(id)" })
    s["commit", default: []].append(now() - t)
    t = now()
    _ = try await c.stat(.with { $0.key = "c-\(id)" })
    s["stat", default: []].append(now() - t)
    t = now()
    _ = try await c.remove(.with { $0.key = "c-\(id)" })
    s["remove", default: []].append(now() - t)
  }
}

/// Opens one client per target and keeps them for the whole body.
func withClients(_ targets: [(String, String)], _ body: ([(String, SnapshotsClient)]) async throws -> Void) async throws {
  let connections = try targets.map { ($0.0, try SnapshotsConnection(socketPath: $0.1)) }
  do {
    try await body(connections.map { ($0.0, $0.1.client) })
  } catch {
    for (_, c) in connections { await c.close() }
    throw error
  }
  for (_, c) in connections { await c.close() }
}

func now() -> Double {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Double(ts.tv_sec) * 1e3 + Double(ts.tv_nsec) / 1e6
}

func percentile(_ xs: [Double], _ p: Double) -> Double {
  guard !xs.isEmpty else { return .nan }
  let s = xs.sorted()
  return s[min(s.count - 1, Int((Double(s.count) * p).rounded(.down)))]
}

func fmt(_ v: Double) -> String { v.isNaN ? "-" : String(format: "%.3f", v) }
func ratio(_ a: Double, _ b: Double) -> String { a.isNaN || b.isNaN ? "-" : String(format: "%.2fx", a / b) }
