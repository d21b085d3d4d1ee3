// Entry point of native-tests: runs registered tests (names containing -o's text and not -x's), prints one line per
// test, exits non-zero on failure.
#include <chrono>
#include <cstring>

#include "test-harness.h"

namespace tc {
std::vector<test_entry> & registry() { static std::vector<test_entry> r; return r; }
std::string g_mode = "test";
int g_failures = 0;
int g_checks = 0;
std::string g_skipped;
} // namespace tc

int main(int argc, char ** argv) {
    std::string filter, exclude;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "-o") && i + 1 < argc) filter = argv[++i];
        else if (!std::strcmp(argv[i], "-x") && i + 1 < argc) exclude = argv[++i];
        else if (!std::strcmp(argv[i], "--mode") && i + 1 < argc) tc::g_mode = argv[++i];
        else if (!std::strcmp(argv[i], "--list")) { for (auto & t : tc::registry()) std::printf("%s\n", t.name.c_str()); return 0; }
        else { std::fprintf(stderr, "usage: native-tests [-o FILTER] [-x EXCLUDE] [--mode test|perf] [--list]\n"); return 2; }
    }
    int failed = 0, ran = 0;
    for (auto & t : tc::registry()) {
        if (!filter.empty() && t.name.find(filter) == std::string::npos) continue;
        if (!exclude.empty() && t.name.find(exclude) != std::string::npos) continue;
        tc::g_failures = 0;
        tc::g_checks = 0;
        tc::g_skipped.clear();
        auto t0 = std::chrono::steady_clock::now();
        try {
            t.fn();
        } catch (const std::exception & e) {
            std::fprintf(stderr, "    exception: %s\n", e.what());
            tc::g_failures++;
        }
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        ran++;
        if (tc::g_failures) failed++;
        std::printf("%-60s %s (%d checks, %.0f ms)\n", t.name.c_str(), tc::g_failures ? "FAIL" : !tc::g_skipped.empty() ? "SKIP" : "OK", tc::g_checks, ms);
    }
    std::printf("%d/%d tests passed\n", ran - failed, ran);
    return failed ? 1 : 0;
}
