// The Python module `mmoverlock._ext`. Importing it loads this library, whose static TORCH_LIBRARY blocks register
// the operators under torch.ops.mmoverlock; the module itself only reports what was compiled in and which
// instruction set the CPU kernels use.
#include <Python.h>

#include <cstdlib>

#include "contmix_common.h"
#include "cpu/contmix_cpu_isa.h"

namespace {

PyObject* cpu_capability(PyObject*, PyObject*) {
  const char* error = nullptr;
  const char* name = mmoverlock::contmix::cpu::selected_capability(&error);
  if (name == nullptr) {
    PyErr_Format(PyExc_ValueError, "environment variable MMOVERLOCK_CPU_CAPABILITY='%s' %s",
                 std::getenv("MMOVERLOCK_CPU_CAPABILITY"), error);
    return nullptr;
  }
  return PyUnicode_FromString(name);
}

PyObject* cpu_capabilities(PyObject*, PyObject*) {
  const char* names[8];
  const int n = mmoverlock::contmix::cpu::supported_capabilities(names, 8);
  PyObject* result = PyTuple_New(n);
  if (result == nullptr) return nullptr;
  for (int i = 0; i < n; ++i) {
    PyObject* item = PyUnicode_FromString(names[i]);
    if (item == nullptr) {
      Py_DECREF(result);
      return nullptr;
    }
    PyTuple_SET_ITEM(result, i, item);
  }
  return result;
}

PyMethodDef ext_methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "Instruction set the CPU kernels use now: the best this CPU supports, or MMOVERLOCK_CPU_CAPABILITY's."},
    {"cpu_capabilities", cpu_capabilities, METH_NOARGS,
     "Instruction sets this CPU can run the kernels with, narrowest first ('default', 'avx2', 'avx512')."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef ext_module = {
    PyModuleDef_HEAD_INIT,
    "_ext",
    "Compiled ContMix kernels for mmoverlock (operators under torch.ops.mmoverlock).",
    -1,
    ext_methods,
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
  if (PyModule_AddIntConstant(module, "cuda_max_kernel_size", mmoverlock::contmix::kCudaMaxKernelSize) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
