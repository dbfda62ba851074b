#!/usr/bin/python3
"""The kubelet's image pull: runtime.v1.ImageService/PullImage on containerd's CRI socket.

  cri.py SOCKET IMAGE...   pulls each IMAGE (all at once), prints each image ref returned

The request and response are encoded by hand (PullImageRequest{image: ImageSpec{image}},
PullImageResponse{image_ref}): two string fields do not need the CRI protos, which Debian
does not package; grpcio (python3-grpcio) carries them.
"""
import sys
import threading

import grpc


def field(number, payload):
    """A length-delimited protobuf field."""
    n, out = len(payload), bytearray([number << 3 | 2])
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + payload


def first_string(message):
    """Field 1 of a message whose field 1 is a string."""
    if not message or message[0] != 0x0A:
        return ""
    n, shift, i = 0, 0, 1
    while True:
        b = message[i]
        n |= (b & 0x7F) << shift
        shift, i = shift + 7, i + 1
        if b < 0x80:
            break
    return message[i:i + n].decode()


def main():
    socket, images = sys.argv[1], sys.argv[2:]
    channel = grpc.insecure_channel("unix://" + socket)
    pull = channel.unary_unary("/runtime.v1.ImageService/PullImage")
    results, failures = {}, []

    def one(image):
        try:
            results[image] = first_string(pull(field(1, field(1, image.encode())), timeout=300))
        except grpc.RpcError as e:
            failures.append(f"{image}: {e.code()}: {e.details()}")

    threads = [threading.Thread(target=one, args=(i,)) for i in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for image in images:
        if image in results:
            print(results[image])
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


main()
