# Bytes objects filled in place: the reader's large reads go straight into
# the result, which is then shrunk to what arrived. Slicing would copy it.
#
# _PyBytes_Resize may resize a bytes object only while no one else can see
# it. So a fresh object is handed around as an owned raw pointer that no
# Python code has seen (reference count 1), never as an `object`, until
# _fresh_finish() returns it. Every _fresh_bytes() is paired with exactly one
# _fresh_finish() (which consumes the pointer, even when it raises) or one
# _fresh_drop() (for error paths and results that are not returned).

from cpython.ref cimport Py_DECREF

cdef extern from "Python.h":
    PyObject *_fresh_new "PyBytes_FromStringAndSize"(
        const char *v, Py_ssize_t n) except NULL
    char *_fresh_data "PyBytes_AS_STRING"(PyObject *b) noexcept
    Py_ssize_t _fresh_size "PyBytes_GET_SIZE"(PyObject *b) noexcept
    # On failure it frees *b, sets it to NULL and raises.
    int _fresh_resize "_PyBytes_Resize"(PyObject **b, Py_ssize_t n) except -1
    void _fresh_drop "Py_XDECREF"(PyObject *b) noexcept


cdef inline PyObject *_fresh_bytes(Py_ssize_t n) except NULL:
    """An uninitialised bytes object of n bytes, owned by the caller."""
    return _fresh_new(NULL, n)


cdef inline int _fresh_grow(PyObject **b, Py_ssize_t n) except -1:
    """Resize *b (NULL: allocate) to n bytes, keeping its contents. On
    failure *b is NULL: the old object is already released."""
    if b[0] == NULL:
        b[0] = _fresh_bytes(n)
        return 0
    return _fresh_resize(b, n)


cdef object _fresh_finish(PyObject *b, Py_ssize_t n):
    """b[:n] as the result, without a copy; consumes b."""
    if n != _fresh_size(b):
        _fresh_resize(&b, n)   # n == 0 gives the shared empty bytes
    result = <object>b         # a second reference...
    Py_DECREF(result)          # ...and back to the one `result` holds
    return result
