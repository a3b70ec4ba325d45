/* placeholder until the plans concern lands */
#include "nnunet_export.h"

int nx_add_plans_functions(PyObject *module)
{
    (void)module;
    return 0;
}
