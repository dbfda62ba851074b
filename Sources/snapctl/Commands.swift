import ArgumentParser
import SnapshotAPI
import SnapshotCore
import SnapshotSys

/// `--label k=v`, repeatable.
struct LabelOptions: ParsableArguments {
  @Option(name: .customLong("label"), help: "A label KEY=VALUE (repeatable).")
  var raw: [String] = []

  var labels: [String: String] {
    var out: [String: String] = [:]
    for item in raw {
      if let eq = item.firstIndex(of: "=") {
        out[String(item[..<eq])] = String(item[item.index(after: eq)...])
      } else {
        out[item] = ""
      }
    }
    return out
  }
}

struct Prepare: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Create an active snapshot KEY on top of PARENT and print its mounts.")
  @OptionGroup var client: ClientOptions
  @OptionGroup var labels: LabelOptions
  @Argument(help: "Key of the new snapshot.") var key: String
  @Argument(help: "Committed parent (none for an empty snapshot).") var parent: String = ""

  func run() async throws {
    try await reporting {
      let request = Containerd_Services_Snapshots_V1_PrepareSnapshotRequest.with {
        $0.key = key
        $0.parent = parent
        $0.labels = labels.labels
      }
      let mounts = try await client.run { try await $0.prepare(request).mounts.map(\.core) }
      Output.mounts(mounts, asJSON: client.json)
    }
  }
}

struct View: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Create a read-only view KEY of PARENT and print its mounts.")
  @OptionGroup var client: ClientOptions
  @OptionGroup var labels: LabelOptions
  @Argument(help: "Key of the new view.") var key: String
  @Argument(help: "Committed parent.") var parent: String = ""

  func run() async throws {
    try await reporting {
      let request = Containerd_Services_Snapshots_V1_ViewSnapshotRequest.with {
        $0.key = key
        $0.parent = parent
        $0.labels = labels.labels
      }
      let mounts = try await client.run { try await $0.view(request).mounts.map(\.core) }
      Output.mounts(mounts, asJSON: client.json)
    }
  }
}

struct Commit: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Commit the active snapshot KEY as NAME.")
  @OptionGroup var client: ClientOptions
  @OptionGroup var labels: LabelOptions
  @Argument(help: "Name of the committed snapshot.") var name: String
  @Argument(help: "Key of the active snapshot.") var key: String

  func run() async throws {
    try await reporting {
      let request = Containerd_Services_Snapshots_V1_CommitSnapshotRequest.with {
        $0.name = name
        $0.key = key
        $0.labels = labels.labels
      }
      _ = try await client.run { try await $0.commit(request) }
    }
  }
}

struct Remove: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove snapshots (children first).", aliases: ["rm"])
  @OptionGroup var client: ClientOptions
  @Argument(help: "Keys to remove.") var keys: [String]

  func run() async throws {
    try await reporting {
      for key in keys {
        _ = try await client.run { try await $0.remove(.with { $0.key = key }) }
      }
    }
  }
}

struct Stat: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Show a snapshot's info.")
  @OptionGroup var client: ClientOptions
  @Argument(help: "Key of the snapshot.") var key: String

  func run() async throws {
    try await reporting {
      let key = self.key
      let info = try await client.run { try await $0.stat(.with { $0.key = key }).info.core }
      // (A daemon older than Describe answers UNIMPLEMENTED: the info alone then.)
      let described = try? await client.store { try await $0.describe(request: .init(message: .with { $0.key = key })) }
      guard let d = described else {
        if client.json { print(Output.json(info)) } else { Output.infos([info], asJSON: false) }
        return
      }
      if client.json {
        print(
          Output.json(info).dropLast()
            + ",\"volatile\":\(d.volatile),\"volatileUntrusted\":\(d.volatileUntrusted),\"sizeLimit\":\(d.sizeLimit),\"available\":\(d.available)}"
        )
        return
      }
      Output.infos([info], asJSON: false)
      var writable: [String] = []
      if d.volatile { writable.append(d.volatileUntrusted ? "volatile, untrusted: the host restarted since it was prepared" : "volatile") }
      if d.sizeLimit > 0 { writable.append("limit \(Output.bytes(d.sizeLimit)), \(Output.bytes(d.available)) free") }
      if !writable.isEmpty { print("writable layer: " + writable.joined(separator: "; ")) }
    }
  }
}

struct List: AsyncParsableCommand {
  static let configuration = CommandConfiguration(commandName: "list", abstract: "List snapshots, optionally filtered.", aliases: ["ls"])
  @OptionGroup var client: ClientOptions
  @Argument(help: "containerd filters (e.g. kind==committed, labels.\"x\"==y); any may match.") var filters: [String] = []

  func run() async throws {
    try await reporting {
      let request = Containerd_Services_Snapshots_V1_ListSnapshotsRequest.with { $0.filters = filters }
      let infos = try await client.run { c in
        try await c.list(request) { response in
          var all: [SnapshotInfo] = []
          for try await batch in response.messages { all += batch.info.map(\.core) }
          return all
        }
      }
      Output.infos(infos, asJSON: client.json)
    }
  }
}

struct Usage: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show bytes and inodes used by snapshots; without keys, also the layer store's bytes with and without sharing.")
  @OptionGroup var client: ClientOptions
  @Argument(help: "Keys (default: every snapshot).") var keys: [String] = []

  func run() async throws {
    try await reporting {
      if keys.isEmpty {
        let u = try await client.store { try await $0.usage(request: .init(message: .init())) }
        if client.json {
          print("{\"layers\":\(u.layers),\"objects\":\(u.objects),\"storedBytes\":\(u.storedBytes),\"logicalBytes\":\(u.logicalBytes)}")
          return
        }
        let saved = u.logicalBytes > 0 ? 100 * Double(u.logicalBytes - u.storedBytes) / Double(u.logicalBytes) : 0
        print(
          "layer store: \(u.layers) layers, \(u.objects) objects, \(Output.bytes(u.storedBytes)) stored, \(Output.bytes(u.logicalBytes)) unshared (\(String(format: "%.1f", saved))% saved by sharing)"
        )
      }
      let keys = self.keys
      let rows: [(String, Int64, Int64)] = try await client.run { c in
        var names = keys
        if names.isEmpty {
          names = try await c.list(.init()) { r in
            var all: [String] = []
            for try await batch in r.messages { all += batch.info.map(\.name) }
            return all
          }
        }
        var rows: [(String, Int64, Int64)] = []
        for key in names {
          let u = try await c.usage(.with { $0.key = key })
          rows.append((key, u.size, u.inodes))
        }
        return rows
      }
      // Each snapshot's writable limit (0: none, or unknown: removed meanwhile, an older daemon).
      let limits: [Int64] =
        (try? await client.store { s in
          var limits: [Int64] = []
          for (key, _, _) in rows {
            limits.append((try? await s.describe(request: .init(message: .with { $0.key = key })).sizeLimit) ?? 0)
          }
          return limits
        }) ?? rows.map { _ in 0 }
      if client.json {
        print(
          "["
            + zip(rows, limits).map { "{\"key\":\(Output.json($0.0.0)),\"size\":\($0.0.1),\"inodes\":\($0.0.2),\"limit\":\($0.1)}" }
            .joined(separator: ",") + "]")
      } else {
        Output.table(
          ["KEY", "SIZE", "INODES", "LIMIT"],
          zip(rows, limits).map { [$0.0.0, String($0.0.1), String($0.0.2), $0.1 > 0 ? Output.bytes($0.1) : "-"] })
      }
    }
  }
}

struct Mounts: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Print the mounts of an active snapshot or view.")
  @OptionGroup var client: ClientOptions
  @Argument(help: "Key of the snapshot.") var key: String

  func run() async throws {
    try await reporting {
      let mounts = try await client.run { try await $0.mounts(.with { $0.key = key }).mounts.map(\.core) }
      Output.mounts(mounts, asJSON: client.json)
    }
  }
}

struct Update: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Set labels of a snapshot.",
    discussion:
      "Without --field every label is replaced by the given ones; with --field labels.KEY only that label changes (removed when not given)."
  )
  @OptionGroup var client: ClientOptions
  @OptionGroup var labels: LabelOptions
  @Option(name: .customLong("field"), help: "Field path to update (labels or labels.KEY), repeatable.") var fields: [String] = []
  @Argument(help: "Key of the snapshot.") var key: String

  func run() async throws {
    try await reporting {
      let request = Containerd_Services_Snapshots_V1_UpdateSnapshotRequest.with {
        $0.info.name = key
        $0.info.labels = labels.labels
        $0.updateMask.paths = fields
      }
      let info = try await client.run { try await $0.update(request).info.core }
      if client.json { print(Output.json(info)) } else { Output.infos([info], asJSON: false) }
    }
  }
}

struct Cleanup: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Delete directories no snapshot refers to.")
  @OptionGroup var client: ClientOptions

  func run() async throws {
    try await reporting {
      _ = try await client.run { try await $0.cleanup(.init()) }
    }
  }
}

struct MountCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mount", abstract: "Mount an active snapshot or view at TARGET (for debugging).")
  @OptionGroup var client: ClientOptions
  @Argument(help: "Key of the snapshot.") var key: String
  @Argument(help: "Existing directory to mount on.") var target: String

  func run() async throws {
    try await reporting {
      let mounts = try await client.run { try await $0.mounts(.with { $0.key = key }).mounts.map(\.core) }
      for m in mounts {
        do { try m.perform(at: target) } catch { throw Failure("mount \(key) at \(target): \(error)") }
      }
    }
  }
}

struct Umount: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Unmount TARGET.")
  @OptionGroup var client: ClientOptions  // accepted for symmetry; umount needs no daemon
  @Argument(help: "Mount point.") var target: String

  func run() async throws {
    try await reporting {
      do { try Sys.unmount(target) } catch { throw Failure("\(error)") }
    }
  }
}
