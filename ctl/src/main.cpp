#include <string>
#include <vector>

#include "ctl/app.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return tokend::ctl::run(args);
}
