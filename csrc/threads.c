/* placeholder until the threads concern lands */
#include "nnunet_export.h"

int nx_add_thread_functions(PyObject *module)
{
    (void)module;
    return 0;
}
