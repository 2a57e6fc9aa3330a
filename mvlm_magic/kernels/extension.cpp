// Our OpenVINO operations as one library: mvlm_magic/runtime/kernels.py compiles this file (one g++ call).
#include "int4_matmul.cpp"
#include "kv_attention.cpp"
#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<mvlm::Int4MatMul>>(),
                                                             std::make_shared<ov::OpExtension<mvlm::Int8MatMul>>(),
                                                             std::make_shared<ov::OpExtension<mvlm::KVAttention>>()}));
