// The Python module `mmoverlock._ext_testing`, built only with MMOVERLOCK_BUILD_TESTING=1 (setup.py; the test set-up
// tools/setup_env.sh sets it). Importing it registers the test-only operators under torch.ops.mmoverlock_testing:
// the CUDA kernels' per-pixel bodies run on the CPU (contmix_testing.cpp, depthwise_testing.cpp). A release build
// (plain `pip install .`) leaves them out of the package.
#include <Python.h>

namespace {

PyModuleDef testing_module = {
    PyModuleDef_HEAD_INIT,
    "_ext_testing",
    "Test-only CPU drivers of mmoverlock's CUDA kernel bodies (operators under torch.ops.mmoverlock_testing).",
    -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__ext_testing(void) { return PyModule_Create(&testing_module); }
