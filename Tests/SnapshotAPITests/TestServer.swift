import Logging
import SnapshotAPI
import SnapshotCore
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Runs `body` with the socket path and snapshotter of a server on a fresh root; the server
/// is stopped and the root removed afterwards.
func withTestServer(_ body: (String, Snapshotter) async throws -> Void) async throws {
  var template = Array("/tmp/snapshotd-api-XXXXXX".utf8CString)
  let dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
  defer {
    try? Sys.detachMounts(under: dir)  // layer images
    try? Tree.remove(dir)
  }
  // The root's alias under /run/sd as the daemon's when root, else beside the root.
  let snapshotter = try Snapshotter(root: dir + "/root", aliasBase: getuid() == 0 ? Layout.defaultAliasBase : dir + "/alias")
  let socket = dir + "/s.sock"
  let server = SnapshotServer(socketPath: socket, snapshotter: snapshotter, logger: Logger(label: "test"))
  try server.start()
  defer { server.stop() }
  try await body(socket, snapshotter)
}
