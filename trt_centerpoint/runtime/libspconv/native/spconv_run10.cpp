// Our caller of libspconv 1.0.x: the library parses the scn file itself (load_engine_from_onnx, through its
// libprotobuf.so.17) and builds the engine; "forward" then runs one frame and writes the dense output.
//
//   spconv_run10 build   FILE.onnx fp16|int8
//   spconv_run10 forward FILE.onnx fp16|int8 FEATURES INDICES N C Z,Y,X OUT
//   spconv_run10 serve   FILE.onnx fp16|int8          (requests on stdin, see shim_io.hpp)
#include <cstring>
#include <memory>

#include "shim_io.hpp"
#include "spconv/engine.hpp"
#include "spconv/tensor.hpp"

namespace {

// FEATURES INDICES N C GRID OUT -> the dense output written to OUT, its shape printed
void forward_one(spconv::Engine& engine, char** request) {
  auto in = trtcp::read_forward_input(request);
  auto features = spconv::Tensor::from_data(in.features.data(), {in.n, in.c}, spconv::DataType::Float16, true);
  auto indices = spconv::Tensor::from_data(in.indices.data(), {in.n, 4}, spconv::DataType::Int32, true);
  auto* out = engine.forward({in.n, in.c}, spconv::DType::Float16, features.ptr(), {in.n, 4},
                             spconv::DType::Int32, indices.ptr(), 1, in.grid, nullptr);
  if (out == nullptr) trtcp::fail("libspconv forward returned no output");
  auto shape = out->features_shape();
  auto host = spconv::Tensor::from_data_reference(out->features_data(), shape, spconv::DataType::Float16, true)
                  .to_host();
  trtcp::write_file(request[5], host.ptr(), host.bytes());
  std::printf("trtcp: output float16 %s\n", trtcp::join(shape).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) trtcp::fail("usage: spconv_run10 build|forward|serve FILE.onnx fp16|int8 [FEATURES ...]");
  const std::string mode = argv[1];
  if (mode == "forward" && argc != 10) trtcp::fail("forward takes FEATURES INDICES N C GRID OUT");
  const auto precision = std::strcmp(argv[3], "int8") == 0 ? spconv::Precision::Int8 : spconv::Precision::Float16;
  if (std::getenv("TRTCP_SPCONV_VERBOSE")) spconv::set_verbose(true);

  auto engine = spconv::load_engine_from_onnx(argv[2], precision);
  if (engine == nullptr) trtcp::fail("libspconv returned no engine");
  std::printf("trtcp: built\n");
  std::fflush(stdout);
  if (mode == "forward") forward_one(*engine, argv + 4);
  if (mode == "serve") trtcp::serve([&](char** request) { forward_one(*engine, request); });
  return 0;
}
