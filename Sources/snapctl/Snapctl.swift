import ArgumentParser
import SnapshotAPI
import SnapshotCore

@main
enum Main {
  /// `snapctl [--address SOCKET] [--json] COMMAND ...`: the global options may come before
  /// the subcommand; they are moved after it, where the subcommand's option group reads them.
  static func main() async {
    var args = Array(CommandLine.arguments.dropFirst())
    var global: [String] = []
    while let first = args.first, first.hasPrefix("--") {
      if first == "--address", args.count > 1 {
        global += args.prefix(2)
        args.removeFirst(2)
      } else if first.hasPrefix("--address=") || first == "--json" {
        global.append(args.removeFirst())
      } else {
        break
      }
    }
    if !global.isEmpty, !args.isEmpty { args.insert(contentsOf: global, at: 1) }
    await Snapctl.main(args)
  }
}

struct Snapctl: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapctl",
    abstract: "Command line for snapshotd: every snapshots API call, and mounts for debugging.",
    discussion: """
      Exit codes: 0 success, 1 other failure, 2 invalid argument, 3 not found, \
      4 already exists, 5 failed precondition, 6 daemon unavailable.
      """,
    subcommands: [
      Prepare.self, View.self, Commit.self, Remove.self, Stat.self, List.self, Usage.self,
      Mounts.self, Update.self, Cleanup.self, MountCommand.self, Umount.self, FuseStatsCommand.self,
      ImportLayer.self, ImportImage.self, Pull.self, GC.self, Check.self, Info.self,
    ])
}

/// Options every subcommand that talks to the daemon shares.
struct ClientOptions: ParsableArguments {
  @Option(help: "snapshotd's unix socket.")
  var address: String = "/run/snapshotd/snapshotd.sock"

  @Flag(help: "Print JSON instead of a table.")
  var json = false

  /// Runs `body` against the daemon; errors print as one line and exit with the code of
  /// their kind.
  func run<T: Sendable>(_ body: @Sendable (SnapshotsClient) async throws -> T) async throws -> T {
    do {
      return try await withSnapshotsClient(socketPath: address, body)
    } catch let error as SnapshotError {
      throw Failure(error)
    }
  }

  /// ``run(_:)`` against the store service.
  func store<T: Sendable>(_ body: @Sendable (StoreClient) async throws -> T) async throws -> T {
    do {
      return try await withStoreClient(socketPath: address, body)
    } catch let error as SnapshotError {
      throw Failure(error)
    }
  }
}

/// A failure printed as `snapctl: message` with an exit code that says what failed.
struct Failure: Error, CustomStringConvertible {
  let description: String
  let code: Int32

  init(_ error: SnapshotError) {
    description = error.message
    code =
      switch error.kind {
      case .invalidArgument: 2
      case .notFound: 3
      case .alreadyExists: 4
      case .failedPrecondition: 5
      case .unavailable: 6
      case .cancelled: 7
      case .internal: 1
      }
  }

  init(_ message: String, code: Int32 = 1) {
    description = message
    self.code = code
  }
}

extension AsyncParsableCommand {
  /// Prints a failure and exits with its code.
  func reporting(_ body: () async throws -> Void) async throws {
    do {
      try await body()
    } catch let f as Failure {
      printError("snapctl: \(f.description)")
      throw ExitCode(f.code)
    }
  }
}

func printError(_ s: String) {
  var err = StandardError()
  print(s, to: &err)
}

struct StandardError: TextOutputStream {
  mutating func write(_ string: String) {
    var s = string
    s.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
  }
}

#if canImport(Glibc)
  import Glibc
#endif
