// The Python module `mmoverlock._ext`. Importing it loads this library, whose static TORCH_LIBRARY blocks register
// the operators under torch.ops.mmoverlock; the module itself only reports what was compiled in.
#include <Python.h>

namespace {

PyModuleDef ext_module = {
    PyModuleDef_HEAD_INIT,
    "_ext",
    "Compiled ContMix kernels for mmoverlock (operators under torch.ops.mmoverlock).",
    -1,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__ext(void) {
  PyObject* module = PyModule_Create(&ext_module);
  if (module == nullptr) return nullptr;
#ifdef MMOVERLOCK_WITH_CUDA
  PyObject* backends = Py_BuildValue("(ss)", "cpu", "cuda");
#else
  PyObject* backends = Py_BuildValue("(s)", "cpu");
#endif
  // PyModule_AddObject steals the reference only on success.
  if (backends == nullptr || PyModule_AddObject(module, "backends", backends) < 0) {
    Py_XDECREF(backends);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
