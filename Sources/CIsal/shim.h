// ISA-L's igzip: gzip inflation about 2.7x as fast as zlib on this project's machines
// (Unpack.Gunzip).
#include <isa-l/igzip_lib.h>
