// snapfuzz: coverage-guided fuzzing of every parser of untrusted input, one target each
// (`FuzzTargets.all`). Two builds of one source:
//
//   scripts/fuzz TARGET [SECONDS]   builds it with ASan and libFuzzer's coverage
//                                   instrumentation (-DFUZZING, .build-fuzz) and runs
//                                   libFuzzer on Tests/fuzz/corpus/TARGET
//   snapfuzz TARGET FILE...         the ordinary build: runs each input once (the seed
//                                   corpora and every crasher kept as a regression test;
//                                   scripts/test replays them all)
//
// libFuzzer's own main cannot be linked beside the one SwiftPM gives an executable, so the
// fuzzing build links libclang_rt.fuzzer_no_main and starts it with LLVMFuzzerRunDriver.
import CSysShims
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

@main
struct SnapFuzz {
  static func main() {
    #if FUZZING
      guard let name = ProcessInfo.processInfo.environment["SNAPFUZZ_TARGET"], let target = FuzzTargets.all[name] else {
        FileHandle.standardError.write(
          "SNAPFUZZ_TARGET must name one of: \(FuzzTargets.all.keys.sorted().joined(separator: " "))\n".data(using: .utf8)!)
        exit(2)
      }
      FuzzTargets.selected = target
      var argc = CommandLine.argc
      var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
      exit(
        LLVMFuzzerRunDriver(&argc, &argv) { data, size in
          FuzzTargets.selected?(data.map { Array(UnsafeBufferPointer(start: $0, count: Int(size))) } ?? [])
          return 0
        })
    #else
      let args = CommandLine.arguments
      guard args.count >= 2, let target = FuzzTargets.all[args[1]] else {
        print("usage: snapfuzz TARGET FILE...   (targets: \(FuzzTargets.all.keys.sorted().joined(separator: " ")))")
        exit(2)
      }
      var n = 0
      for path in args.dropFirst(2) {
        guard let data = FileManager.default.contents(atPath: path) else {
          print("snapfuzz: cannot read \(path)")
          exit(1)
        }
        target(Array(data))
        n += 1
      }
      print("snapfuzz \(args[1]): \(n) inputs ran")
    #endif
  }
}
