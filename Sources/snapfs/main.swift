// snapfs: the FUSE overlay file system of snapshotd. See FuseOverlay.Options for the command line.
import FuseOverlay

#if canImport(Glibc)
  import Glibc
#endif

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.contains("-h") || arguments.contains("--help") {
  print(Options.usage)
  exit(0)
}
do {
  exit(serve(try Options.parse(arguments)))
} catch {
  var text = "snapfs: \(error.description)\n\(Options.usage)\n"
  text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
  exit(2)
}
