// Our caller of libspconv 1.1.x and later: the network comes as a small text description that our Python side
// writes from the scn file (one node a line, tab-separated fields) plus the FP16 weights in one blob, and is
// pushed into the library's EngineBuilder in file order, the way NVIDIA's own ONNX reader does it. A name
// that no earlier line produced is passed on as a null tensor, as NVIDIA's reader does.
//
//   spconv_run11 build   NET.txt WEIGHTS.bin fp16|int8
//   spconv_run11 forward NET.txt WEIGHTS.bin fp16|int8 FEATURES INDICES N C Z,Y,X OUT
//   spconv_run11 serve   NET.txt WEIGHTS.bin fp16|int8         (requests on stdin, see shim_io.hpp)
#include <cstring>
#include <deque>
#include <memory>
#include <unordered_map>

#include "shim_io.hpp"
#include "spconv/engine.hpp"
#include "spconv/tensor.hpp"

namespace {

using Fields = std::vector<std::string>;

Fields split_tabs(const std::string& line) {
  Fields out;
  size_t start = 0;
  while (true) {
    size_t end = line.find('\t', start);
    out.push_back(line.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

spconv::Precision precision_of(const std::string& text) {
  return text == "int8" ? spconv::Precision::Int8 : spconv::Precision::Float16;
}

std::vector<unsigned short> weights_at(const std::vector<char>& blob, const std::string& offset, size_t count) {
  size_t first = std::strtoull(offset.c_str(), nullptr, 10);
  if ((first + count) * 2 > blob.size()) trtcp::fail("weights blob shorter than the description says");
  auto* data = reinterpret_cast<const unsigned short*>(blob.data()) + first;
  return std::vector<unsigned short>(data, data + count);
}

size_t volume(const std::vector<int>& shape) {
  if (shape.empty()) return 0;
  size_t n = 1;
  for (int d : shape) n *= static_cast<size_t>(d);
  return n;
}

void expect_fields(const Fields& f, size_t count) {
  if (f.size() != count) trtcp::fail("description line '" + f[0] + "' has " + std::to_string(f.size()) + " fields");
}

std::shared_ptr<spconv::Engine> build(const std::string& net, const std::vector<char>& blob,
                                      spconv::Precision precision) {
  auto builder = spconv::create_engine_builder();
  std::unordered_map<std::string, spconv::ITensor*> tensors;
  auto tensor = [&](const std::string& name) {
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : it->second;
  };
  // the builder keeps the name pointers it is given (NVIDIA's reader passes strings that outlive the build)
  std::deque<Fields> kept;
  std::stringstream lines(net);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    kept.push_back(split_tabs(line));
    const Fields& f = kept.back();
    const std::string& op = f[0];
    spconv::INode* node = nullptr;
    if (op == "input") {
      expect_fields(f, 2);
      tensors[f[1]] = builder->push_input(f[1].c_str());
    } else if (op == "conv") {
      // conv NAME X OUT ACT PREC OUTPREC SUBM INVERSE BOUND RULEBOOK IDR K S P D WSHAPE WOFF BSHAPE BOFF WDR
      expect_fields(f, 21);
      auto wshape = trtcp::parse_list<int>(f[16]);
      auto bshape = trtcp::parse_list<int>(f[18]);
      node = builder->push_sparse_conv(
          f[1].c_str(), tensor(f[2]), weights_at(blob, f[17], volume(wshape)), wshape,
          trtcp::parse_list<float>(f[20]), weights_at(blob, f[19], volume(bshape)), bshape, f[4].c_str(),
          trtcp::parse_list<int>(f[12]), trtcp::parse_list<int>(f[13]), trtcp::parse_list<int>(f[14]),
          trtcp::parse_list<int>(f[15]), std::strtof(f[11].c_str(), nullptr), std::atoi(f[7].c_str()) != 0,
          std::atoi(f[9].c_str()), f[10].c_str(), precision_of(f[5]), precision_of(f[6]), f[3].c_str(),
          std::atoi(f[8].c_str()) != 0);
    } else if (op == "add") {
      // add NAME A B OUT PREC OUTPREC DR0 DR1
      expect_fields(f, 9);
      node = builder->push_add(f[1].c_str(), tensor(f[2]), tensor(f[3]), std::strtof(f[7].c_str(), nullptr),
                               std::strtof(f[8].c_str(), nullptr), f[4].c_str(), precision_of(f[5]),
                               precision_of(f[6]));
    } else if (op == "relu") {
      expect_fields(f, 4);
      node = builder->push_relu(f[1].c_str(), tensor(f[2]), f[3].c_str());
    } else if (op == "dense") {
      // dense NAME X OUT FORMAT INPUT_SPATIAL_SHAPE OUTPUT_SHAPE LAYOUT IDR
      expect_fields(f, 9);
      auto layout = f[7] == "NCHW32" ? spconv::TensorLayout::NCHW32 : spconv::TensorLayout::NCHW;
      node = builder->push_dense(f[1].c_str(), tensor(f[2]), f[4].c_str(), f[3].c_str(),
                                 trtcp::parse_list<int>(f[5]), trtcp::parse_list<int>(f[6]), layout,
                                 std::strtof(f[8].c_str(), nullptr));
    } else if (op == "reshape" || op == "transpose") {
      expect_fields(f, 5);
      auto dims = trtcp::parse_list<int64_t>(f[4]);
      node = op == "reshape" ? builder->push_reshape(f[1].c_str(), tensor(f[2]), dims, f[3].c_str())
                             : builder->push_transpose(f[1].c_str(), tensor(f[2]), dims, f[3].c_str());
    } else if (op == "output") {
      expect_fields(f, 2);
      builder->push_output(tensor(f[1]));
    } else {
      trtcp::fail("unknown description line '" + op + "'");
    }
    // the output name is field 3 of every line that makes a node, field 4 of an add (two inputs)
    if (node != nullptr) tensors[f[op == "add" ? 4 : 3]] = node->output(0);
  }
  return builder->build(precision, nullptr);
}

}  // namespace

// FEATURES INDICES N C GRID OUT -> output(0)'s features written to OUT, its type and shape printed
static void forward_one(spconv::Engine& engine, char** request) {
  auto in = trtcp::read_forward_input(request);
  auto features = spconv::Tensor::from_data(in.features.data(), std::vector<int64_t>{in.n, in.c},
                                            spconv::DataType::Float16, true);
  auto indices = spconv::Tensor::from_data(in.indices.data(), std::vector<int64_t>{in.n, 4},
                                           spconv::DataType::Int32, true);
  engine.input(0)->features().reference(features.ptr(), features.shape, spconv::DataType::Float16, true);
  engine.input(0)->indices().reference(indices.ptr(), indices.shape, spconv::DataType::Int32, true);
  engine.input(0)->set_grid_size(in.grid);
  engine.forward(nullptr);
  auto& out = engine.output(0)->features();
  auto host = out.to_host();
  trtcp::write_file(request[5], host.ptr(), host.bytes());
  std::printf("trtcp: output %s %s\n", spconv::dtype_string(out.dtype()), trtcp::join(out.shape).c_str());
}

int main(int argc, char** argv) {
  if (argc < 5) trtcp::fail("usage: spconv_run11 build|forward|serve NET.txt WEIGHTS.bin fp16|int8 [FEATURES ...]");
  const std::string mode = argv[1];
  if (mode == "forward" && argc != 11) trtcp::fail("forward takes FEATURES INDICES N C GRID OUT");
  if (std::getenv("TRTCP_SPCONV_VERBOSE")) spconv::set_verbose(true);
  auto net = trtcp::read_file(argv[2]);
  auto blob = trtcp::read_file(argv[3]);

  auto engine = build(std::string(net.begin(), net.end()), blob, precision_of(argv[4]));
  if (engine == nullptr) trtcp::fail("libspconv returned no engine");
  std::printf("trtcp: built %zu input(s), %zu output(s)\n", engine->num_input(), engine->num_output());
  std::fflush(stdout);
  if (mode == "forward") forward_one(*engine, argv + 5);
  if (mode == "serve") trtcp::serve([&](char** request) { forward_one(*engine, request); });
  return 0;
}
