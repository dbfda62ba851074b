import CoreMetrics
import Synchronization

/// Per-method request counts by gRPC status code and latency histograms, recorded
/// around every route (`instrument`), through swift-metrics with its owner's factory.
/// A call is timed from its request message to its response (or status), as the server
/// sees it; calls whose request never decodes as a message are not counted.
public struct RPCMetrics: Sendable {
  let factory: any MetricsFactory

  public init(factory: any MetricsFactory) { self.factory = factory }

  static let requests = "snapshotd_grpc_requests_total"
  static let duration = "snapshotd_grpc_request_duration_seconds"

  /// The HELP line of each metric recorded here.
  public static let help: [String: String] = [
    requests: "gRPC calls answered, by service, method and status code.",
    duration: "Time from a gRPC call's request to its answer, by service and method.",
  ]

  /// `routes`, each wrapped to record its calls.
  public func instrument(_ routes: RPCRoutes) -> RPCRoutes {
    routes.reduce(into: RPCRoutes()) { table, route in
      let record = Recorder(path: route.key, factory: factory)
      table[route.key] =
        switch route.value {
        case .unary(let body): .unary { bytes in try record.call { try body(bytes) } }
        case .unaryOffThread(let body): .unaryOffThread { bytes in try record.call { try body(bytes) } }
        case .streaming(let body): .streaming { stream in try record.call { try body(stream) } }
        }
    }
  }

  /// One method's instruments; the counters by code made on first use.
  final class Recorder: Sendable {
    let dimensions: [(String, String)]
    let timer: Timer
    let factory: any MetricsFactory
    let counters = Mutex<[RPCStatus.Code: Counter]>([:])

    init(path: String, factory: any MetricsFactory) {
      // "/containerd.services.snapshots.v1.Snapshots/Prepare" → ("Snapshots", "Prepare")
      let parts = path.split(separator: "/")
      let service = parts.first.map { String($0.split(separator: ".").last ?? $0) } ?? ""
      dimensions = [("service", service), ("method", parts.count > 1 ? String(parts[1]) : "")]
      self.factory = factory
      timer = Timer(label: RPCMetrics.duration, dimensions: dimensions, factory: factory)
    }

    func call<T>(_ body: () throws -> T) throws -> T {
      let start = ContinuousClock.now
      var code = RPCStatus.Code.ok
      defer {
        let (seconds, attoseconds) = (ContinuousClock.now - start).components
        timer.recordNanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
        counter(code).increment()
      }
      do {
        return try body()
      } catch let status as RPCStatus {
        code = status.code
        throw status
      } catch {
        code = .internal
        throw error
      }
    }

    private func counter(_ code: RPCStatus.Code) -> Counter {
      counters.withLock { made in
        if let counter = made[code] { return counter }
        let counter = Counter(label: RPCMetrics.requests, dimensions: dimensions + [("code", code.name)], factory: factory)
        made[code] = counter
        return counter
      }
    }
  }
}

extension RPCStatus.Code {
  /// The code as gRPC names it (`NOT_FOUND`).
  var name: String {
    switch self {
    case .ok: "OK"
    case .cancelled: "CANCELLED"
    case .unknown: "UNKNOWN"
    case .invalidArgument: "INVALID_ARGUMENT"
    case .deadlineExceeded: "DEADLINE_EXCEEDED"
    case .notFound: "NOT_FOUND"
    case .alreadyExists: "ALREADY_EXISTS"
    case .permissionDenied: "PERMISSION_DENIED"
    case .resourceExhausted: "RESOURCE_EXHAUSTED"
    case .failedPrecondition: "FAILED_PRECONDITION"
    case .aborted: "ABORTED"
    case .outOfRange: "OUT_OF_RANGE"
    case .unimplemented: "UNIMPLEMENTED"
    case .internal: "INTERNAL"
    case .unavailable: "UNAVAILABLE"
    case .dataLoss: "DATA_LOSS"
    case .unauthenticated: "UNAUTHENTICATED"
    }
  }
}
