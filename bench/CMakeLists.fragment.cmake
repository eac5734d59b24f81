# loadgen: closed-loop HTTP/1.1 load over a Unix socket (one epoll thread,
# Beast's parser on plain buffers); bench/token_bench.sh drives it.
# Included from bench/CMakeLists.txt: include(CMakeLists.fragment.cmake)
add_executable(loadgen loadgen.cpp)
target_link_libraries(loadgen PRIVATE
  Boost::program_options Boost::headers nlohmann_json::nlohmann_json tokend_warnings)
