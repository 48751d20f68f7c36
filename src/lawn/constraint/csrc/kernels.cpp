// lawn's one C++ extension: both CPU kernels compiled as one translation unit (a "unity build"), so that the
// first use pays for parsing torch's headers once (about 50 s on 2 cores) instead of once per kernel.
//
//   fused_constraint.cpp   project_, retract_: the projection and the retraction alone (lawn/constraint/fused.py)
//   fused_step.cpp         adam_, sgd_: projection + base step + retraction (lawn/constraint/fused_step.py)
#include "fused_constraint.cpp"
#include "fused_step.cpp"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("project_", &lawn_constraint::project_, "fused tangent projection of gradients, in place");
  m.def("retract_", &lawn_constraint::retract_, "fused retraction of weights onto their norms, in place");
  m.def("adam_", &lawn_step::adam_, "projection + Adam/AdamW step + retraction, fused, in place");
  m.def("sgd_", &lawn_step::sgd_, "projection + SGD step + retraction, fused, in place");
}
