// Our OpenVINO operations as one library: registers them, nothing else (mvlm_magic/ops/build.py compiles every
// .cpp file here in one compiler call; CMakeLists.txt does the same for developer builds).
#include "int4_matmul.hpp"
#include "int8_matmul.hpp"
#include "kv_attention.hpp"
#include "openvino/core/extension.hpp"
#include "openvino/core/op_extension.hpp"

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({std::make_shared<ov::OpExtension<mvlm::Int4MatMul>>(),
                                                             std::make_shared<ov::OpExtension<mvlm::Int8MatMul>>(),
                                                             std::make_shared<ov::OpExtension<mvlm::KVAttention>>()}));
