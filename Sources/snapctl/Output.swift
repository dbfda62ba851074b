import SnapshotCore

/// Human tables and JSON for snapctl's output. JSON is written by hand here: the values
/// are a handful of strings and numbers, and the output stays in the order a reader
/// expects (the fields of `snapctl stat`), which JSONEncoder does not promise.
enum Output {
  static func table(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
      cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i] + 2) }.joined()
    }
    print(line(header))
    for row in rows { print(line(row)) }
  }

  static func json(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\t": out += "\\t"
      case "\r": out += "\\r"
      default:
        if u.value < 0x20 {
          out += "\\u" + String(u.value, radix: 16).leftPadded(to: 4)
        } else {
          out.unicodeScalars.append(u)
        }
      }
    }
    return out + "\""
  }

  static func json(_ labels: [String: String]) -> String {
    "{" + labels.sorted { $0.key < $1.key }.map { json($0.key) + ":" + json($0.value) }.joined(separator: ",") + "}"
  }

  static func json(_ info: SnapshotInfo) -> String {
    """
    {"name":\(json(info.name)),"parent":\(json(info.parent)),"kind":"\(info.kind.name)",\
    "created":\(json(timestamp(info.created))),"updated":\(json(timestamp(info.updated))),\
    "labels":\(json(info.labels))}
    """
  }

  static func json(_ m: SnapshotCore.Mount) -> String {
    "{\"type\":\(json(m.type)),\"source\":\(json(m.source)),\"options\":[\(m.options.map(json).joined(separator: ","))]}"
  }

  static func mounts(_ mounts: [SnapshotCore.Mount], asJSON: Bool) {
    if asJSON {
      print("[" + mounts.map(json).joined(separator: ",") + "]")
    } else {
      table(["TYPE", "SOURCE", "OPTIONS"], mounts.map { [$0.type, $0.source, $0.options.joined(separator: ",")] })
    }
  }

  static func infos(_ infos: [SnapshotInfo], asJSON: Bool) {
    if asJSON {
      print("[" + infos.map(json).joined(separator: ",") + "]")
    } else {
      table(
        ["KEY", "PARENT", "KIND", "CREATED", "LABELS"],
        infos.map { i in
          [
            i.name, i.parent, i.kind.name, timestamp(i.created),
            i.labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ","),
          ]
        })
    }
  }

  /// RFC 3339 in UTC from nanoseconds since the epoch.
  static func timestamp(_ nanos: Int64) -> String {
    var t = time_t(nanos / 1_000_000_000)
    var tmv = tm()
    gmtime_r(&t, &tmv)
    func two(_ v: Int32) -> String { String(v).leftPadded(to: 2) }
    return "\(tmv.tm_year + 1900)-\(two(tmv.tm_mon + 1))-\(two(tmv.tm_mday))T\(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec))Z"
  }
}

extension String {
  func padding(toLength n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
  func leftPadded(to n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

#if canImport(Glibc)
  import Glibc
#endif

extension Output {
  /// `1.5 GB`-style sizes (powers of 1000, as `du --si`).
  static func bytes(_ n: Int64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"]
    var v = Double(n)
    var i = 0
    while v >= 1000 && i < units.count - 1 {
      v /= 1000
      i += 1
    }
    return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
  }
}
