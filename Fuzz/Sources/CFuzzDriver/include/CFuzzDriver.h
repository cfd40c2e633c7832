#include <stddef.h>
#include <stdint.h>

/// libFuzzer's driver (compiler-rt), run from the executable's own `main` so that SwiftPM's entry
/// point and libFuzzer's do not collide.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
