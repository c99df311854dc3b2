// File helpers shared by our two libspconv callers (API 1.0.x and 1.1.x). Lines we print for the Python side
// start with "trtcp:"; everything else on stdout / stderr is the library's own.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace trtcp {

[[noreturn]] inline void fail(const std::string& message) {
  std::printf("trtcp: error %s\n", message.c_str());
  std::fflush(stdout);
  std::exit(3);
}

inline std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read " + path);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) fail("cannot write " + path);
}

// "3,3,3" -> {3, 3, 3}; "" -> {}
template <typename T>
std::vector<T> parse_list(const std::string& text) {
  std::vector<T> out;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    if (!item.empty()) out.push_back(static_cast<T>(std::strtod(item.c_str(), nullptr)));
  }
  return out;
}

template <typename T>
std::string join(const std::vector<T>& values) {
  std::ostringstream out;
  for (size_t i = 0; i < values.size(); ++i) out << (i ? " " : "") << values[i];
  return out.str();
}

// The input of a forward pass: features [n, c] fp16, indices [n, 4] int32 (batch, z, y, x), grid "z,y,x".
struct ForwardInput {
  std::vector<char> features, indices;
  long n = 0, c = 0;
  std::vector<int> grid;
};

inline ForwardInput read_forward_input(char** argv) {
  ForwardInput in;
  in.features = read_file(argv[0]);
  in.indices = read_file(argv[1]);
  in.n = std::atol(argv[2]);
  in.c = std::atol(argv[3]);
  in.grid = parse_list<int>(argv[4]);
  if (in.features.size() != static_cast<size_t>(in.n * in.c * 2)) fail("features file size != n * c * 2");
  if (in.indices.size() != static_cast<size_t>(in.n * 4 * 4)) fail("indices file size != n * 4 * 4");
  return in;
}

// "serve": one request a line on stdin (FEATURES INDICES N C Z,Y,X OUT, tab-separated), one "trtcp: output"
// line back per request, until end of input; the engine is built once for all of them.
template <typename Forward>
void serve(Forward&& forward) {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    std::vector<std::string> fields;
    std::stringstream stream(line);
    std::string field;
    while (std::getline(stream, field, '\t')) fields.push_back(field);
    if (fields.size() != 6) fail("a request has " + std::to_string(fields.size()) + " fields, expected 6");
    std::vector<char*> args;
    for (auto& f : fields) args.push_back(&f[0]);
    forward(args.data());
    std::fflush(stdout);
  }
}

}  // namespace trtcp
