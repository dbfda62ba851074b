import CFuse
import CFuseIO
import FuseStats
import SnapshotSys

#if canImport(Glibc)
  import Glibc
#endif

/// Mounts the overlay described by `options` and serves it until it is unmounted or the
/// process gets SIGTERM, SIGINT or SIGHUP (then it unmounts). Unless `foreground`, the
/// process detaches once the mount is in place, so `mount.fuse3` (and containerd through
/// it) returns with the file system ready. The mount uses libfuse's auto_unmount: if the
/// process dies without unmounting (SIGKILL), fusermount3 unmounts it.
///
/// Returns the process's exit status; errors are written to stderr.
public func serve(_ options: Options) -> Int32 {
  func fail(_ message: String) -> Int32 {
    FileHandleStderr.write("snapfs: \(message)\n")
    return 1
  }
  umask(0)  // modes come from the kernel with the caller's umask applied
  raiseDescriptorLimit()
  let overlay: Overlay
  do {
    overlay = try Overlay(options)
  } catch {
    return fail("\(error.description)")
  }
  var mountOptions = ["subtype=snapfs", "default_permissions", "allow_other", "auto_unmount"]
  if !options.mountOptions.contains(where: { $0.hasPrefix("fsname=") }) { mountOptions.append("fsname=" + options.source) }
  mountOptions += options.mountOptions
  if !overlay.hasUpper && !options.readOnly { mountOptions.append("ro") }
  let fs = FileSystem(overlay, readOnly: options.readOnly || !overlay.hasUpper, volatile: options.volatile)
  var arguments = ["snapfs", "-o", mountOptions.joined(separator: ",")]
  if options.debug { arguments.append("-d") }
  var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
  defer { for p in argv { free(p) } }
  var ops = FileSystem.operations()
  return argv.withUnsafeMutableBufferPointer { argvBuffer -> Int32 in
    var args = fuse_args(argc: Int32(arguments.count), argv: argvBuffer.baseAddress, allocated: 0)
    guard let session = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, fs.session) else {
      return fail("cannot start a FUSE session with options \(mountOptions.joined(separator: ","))")
    }
    var threadsStopped = true
    defer { if threadsStopped { fuse_session_destroy(session) } }
    guard fuse_set_signal_handlers(session) == 0 else {
      return fail("cannot install signal handlers")
    }
    defer { fuse_remove_signal_handlers(session) }
    // The notifier (started below, after the fork into the background) is stopped after the
    // unmount (deferred below, so run first), which ends the requests a notification could be
    // waiting behind. If its thread does not end, the session is left to the process's exit.
    defer { if let notifier = fs.notifier, !notifier.stop() { threadsStopped = false } }
    // Resolved before mounting: once mounted, a lookup in it waits for this process to serve.
    let target: String
    do { target = try Sys.realPath(options.target) } catch { return fail("mount point \(options.target): \(error)") }
    guard fuse_session_mount(session, target) == 0 else {
      return fail("cannot mount on \(options.target)")
    }
    defer { fuse_session_unmount(session) }
    // libfuse mounts through fusermount3 for auto_unmount, which adds nosuid and nodev
    // whatever the options say; overlayfs (and so a container's root) has neither unless
    // asked. The mount point's flags are set again as asked; if that fails the mount stays
    // as fusermount3 made it, the safe side, and says so.
    do {
      try Sys.setMountFlags(target, nosuid: options.nosuid, nodev: options.nodev)
    } catch {
      FileHandleStderr.write("snapfs: warning: the mount stays nosuid,nodev: cannot set its flags: \(error)\n")
    }
    // Requests and replies through CFuseIO's hooks, which negotiate passthrough.
    let devfd = fuse_session_fd(session)
    fs.attach(devfd: devfd, passthrough: options.passthrough, cachedReadsMax: options.cachedReadsMax)
    var io = fuse_custom_io(writev: fuseio_writev, read: fuseio_read, splice_receive: fuseio_splice_receive, splice_send: fuseio_splice)
    guard fuse_session_custom_io(session, &io, devfd) == 0 else {
      return fail("cannot install the session's I/O hooks")
    }
    fs.session.pointee.busy_poll_ns = Int64(options.busyPollMicroseconds) * 1000
    if !options.foreground { fuse_daemonize(0) }
    // The request statistics, named by the mount's device (mountinfo: no request to
    // ourselves, which nobody would serve yet).
    if let mount = (try? MountInfo.current())?.last(where: { $0.mountPoint == target && $0.fsType == "fuse.snapfs" }) {
      do {
        fs.stats = try FuseStats.Recorder(major: mount.major, minor: mount.minor)
      } catch {
        FileHandleStderr.write("snapfs: warning: no request statistics: \(error)\n")
      }
    }
    defer { fs.stats?.remove() }
    fs.notifier = Notifier(session: session)
    fs.fuseSession = session
    let rc = snapfs_loop_mt(session, UInt32(options.threads), UInt32(options.threads))
    // libfuse's signal handlers end the loop with the signal's number: a clean stop.
    return rc == 0 || rc == SIGTERM || rc == SIGINT || rc == SIGHUP ? 0 : 1
  }
}

/// A descriptor per directory per layer the kernel holds: a walk of a tree with many
/// directories needs more than the default soft limit of 1024. Root may raise the hard
/// limit too, up to the kernel's nr_open.
private func raiseDescriptorLimit() {
  var limit = rlimit()
  guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
  if let text = try? String(contentsOfProcFile: "/proc/sys/fs/nr_open"), let max = rlim_t(text) {
    var wanted = rlimit(rlim_cur: max, rlim_max: max)
    if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &wanted) == 0 { return }
  }
  limit.rlim_cur = limit.rlim_max
  setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

extension String {
  /// A small /proc file's first line.
  init(contentsOfProcFile path: String) throws(Errno) {
    let fd = try Sys.call(open(path, O_RDONLY | O_CLOEXEC))
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 64)
    let n = try Sys.call(read(fd, &buffer, buffer.count))
    self = String(decoding: buffer[..<n], as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
  }
}

/// Writes to standard error (Glibc's `stderr` is a mutable global Swift 6 will not touch).
enum FileHandleStderr {
  static func write(_ text: String) {
    var text = text
    text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
  }
}
