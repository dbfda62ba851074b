// swift-tools-version:6.1
// snapshotd: a layered filesystem snapshotter service for containerd.
//
// Dependencies point one way:
//   CSysShims (C) → SnapshotSys (system calls, waiting) → Unpack (with CArchive, CIsal, CSha256: layer
//   tars into content objects and trees, EROFS images, OCI formats) → SnapshotCore (metadata,
//   layout, mounts, imports) → SnapshotAPI (gRPC, generated code) → snapshotd, snapctl
//   SnapshotSys, CFuse (libfuse3), CFuseIO (passthrough hooks) → FuseOverlay (the FUSE overlay
//   file system) → snapfs
//   SnapshotSys → FuseStats (snapfs's request statistics file) → FuseOverlay, snapctl
//   Unpack → Registry (OCI distribution client: async-http-client, hosts.toml, auth)
//   Registry, SnapshotCore → snapshotd (its RegistryFetcher: the layers containerd's CRI
//   names, fetched on Prepare; its metrics endpoint: swift-prometheus over NIO HTTP/1)
//   SnapshotCore and SnapshotAPI record metrics through swift-metrics (CoreMetrics) with
//   the factory snapshotd gives them; neither knows Prometheus.
//   Benchmarks/snapbench times the core in-process; Tests/fuzz (snapfuzz) fuzzes the parsers.
// The core never imports gRPC.
import PackageDescription

let package = Package(
  name: "snapshotd",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "snapshotd", targets: ["snapshotd"]),
    .executable(name: "snapctl", targets: ["snapctl"]),
    .executable(name: "snapbench", targets: ["snapbench"]),
    .executable(name: "snapfs", targets: ["snapfs"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    .package(url: "https://github.com/grpc/grpc-swift-2.git", from: "2.4.3"),
    .package(url: "https://github.com/grpc/grpc-swift-nio-transport.git", from: "2.9.2"),
    .package(url: "https://github.com/grpc/grpc-swift-protobuf.git", from: "2.4.1"),
    .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
    .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
    .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
    .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
  ],
  targets: [
    .target(name: "CSysShims", path: "Sources/CSysShims"),
    .target(name: "CFuseIO"),
    .target(name: "CSha256"),
    .systemLibrary(
      name: "CArchive",
      path: "Sources/CArchive",
      pkgConfig: "libarchive",
      providers: [.apt(["libarchive-dev"])]
    ),
    .systemLibrary(
      name: "CIsal",
      path: "Sources/CIsal",
      pkgConfig: "libisal",
      providers: [.apt(["libisal-dev"])]
    ),
    .systemLibrary(
      name: "CFuse",
      path: "Sources/CFuse",
      pkgConfig: "fuse3",
      providers: [.apt(["libfuse3-dev"])]
    ),
    .target(
      name: "FuseStats",
      dependencies: ["CSysShims", "SnapshotSys"]
    ),
    .target(
      name: "FuseOverlay",
      dependencies: ["CSysShims", "CFuse", "CFuseIO", "SnapshotSys", "FuseStats"]
    ),
    .executableTarget(
      name: "snapfs",
      dependencies: ["FuseOverlay"]
    ),
    .target(
      name: "SnapshotSys",
      dependencies: ["CSysShims"],
      path: "Sources/SnapshotSys"
    ),
    .target(
      name: "Unpack",
      dependencies: [
        "SnapshotSys", "CArchive", "CIsal", "CSha256",
        .product(name: "Crypto", package: "swift-crypto"),
      ]
    ),
    .target(
      name: "Registry",
      dependencies: [
        "Unpack", "SnapshotSys",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
      ]
    ),
    .executableTarget(
      name: "registry-probe",
      dependencies: [
        "Registry", "Unpack",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Tests/registry-probe"
    ),
    .target(
      name: "SnapshotCore",
      dependencies: [
        "SnapshotSys", "Unpack",
        .product(name: "GRDB", package: "GRDB.swift"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
      ]
    ),
    .target(
      name: "SnapshotAPI",
      dependencies: [
        "SnapshotCore", "Unpack", "SnapshotSys",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "GRPCNIOTransportHTTP2", package: "grpc-swift-nio-transport"),
        .product(name: "GRPCProtobuf", package: "grpc-swift-protobuf"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHPACK", package: "swift-nio-http2"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
      ]
    ),
    .executableTarget(
      name: "snapshotd",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "SnapshotSys", "Registry", "Unpack",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "CoreMetrics", package: "swift-metrics"),
        .product(name: "Prometheus", package: "swift-prometheus"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ]
    ),
    .executableTarget(
      name: "snapctl",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "SnapshotSys", "FuseStats",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ]
    ),
    .executableTarget(
      name: "snapbench",
      dependencies: [
        "SnapshotCore",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
      ],
      path: "Benchmarks/snapbench"
    ),
    // Coverage-guided fuzzing of the parsers of untrusted input (scripts/fuzz); in the
    // ordinary build it replays the corpora (scripts/test).
    .executableTarget(
      name: "snapfuzz",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "Unpack", "Registry", "FuseOverlay", "SnapshotSys", "CSysShims",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ],
      path: "Tests/fuzz",
      exclude: ["corpus"]
    ),
    .testTarget(
      name: "SnapshotSysTests",
      dependencies: ["SnapshotSys"]
    ),
    .testTarget(
      name: "FuseOverlayTests",
      dependencies: ["FuseOverlay", "CSysShims", "SnapshotSys"]
    ),
    .testTarget(
      name: "UnpackTests",
      dependencies: ["Unpack", "SnapshotSys"]
    ),
    .testTarget(
      name: "RegistryTests",
      dependencies: ["Registry", "Unpack", .product(name: "NIOCore", package: "swift-nio")]
    ),
    .testTarget(
      name: "SnapshotCoreTests",
      dependencies: ["SnapshotCore", "SnapshotSys", "Unpack"]
    ),
    .testTarget(
      name: "SnapshotAPITests",
      dependencies: [
        "SnapshotAPI", "SnapshotCore", "SnapshotSys",
        .product(name: "GRPCCore", package: "grpc-swift-2"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SwiftProtobuf", package: "swift-protobuf"),
      ]
    ),
  ]
)
