// Minimal test harness for the native test binary (runs without Node, e.g. on the GPU machine).
//   TC_TEST(name) { ... TC_CHECK(cond) << "context"; }
// `native-tests [-o FILTER] [--mode test|perf]` runs every test whose name contains FILTER.
#pragma once
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace tc {

struct test_entry { std::string name; std::function<void()> fn; };
std::vector<test_entry> & registry();
struct registrar { registrar(const char * n, std::function<void()> f) { registry().push_back({n, std::move(f)}); } };

// Mode and per-test failure counter, set by test-main.cpp.
extern std::string g_mode;      // "test" or "perf"
extern int g_failures;          // failures in the current test
extern int g_checks;
extern std::string g_skipped;   // set by a test that cannot run here (e.g. no CUDA device): printed as SKIP

struct check_msg {
    bool ok; const char * expr; const char * file; int line; std::ostringstream os;
    check_msg(bool ok_, const char * e, const char * f, int l) : ok(ok_), expr(e), file(f), line(l) {}
    ~check_msg() {
        g_checks++;
        if (!ok) {
            g_failures++;
            if (g_failures <= 10) std::fprintf(stderr, "    FAIL %s:%d: %s %s\n", file, line, expr, os.str().c_str());
        }
    }
    template <class T> check_msg & operator<<(const T & v) { if (!ok) os << v; return *this; }
};

// Normalized mean squared error of a against ref: mse(a, ref) / mse(ref, 0) (test-backend-ops' metric).
inline double nmse(const float * a, const float * ref, size_t n) {
    double err = 0.0, sig = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double) a[i] - (double) ref[i];
        err += d * d;
        sig += (double) ref[i] * ref[i];
    }
    return sig > 0.0 ? err / sig : err;
}

} // namespace tc

#define TC_CAT2(a, b) a##b
#define TC_CAT(a, b) TC_CAT2(a, b)
#define TC_TEST(name)                                                                  \
    static void TC_CAT(tc_fn_, __LINE__)();                                            \
    static tc::registrar TC_CAT(tc_reg_, __LINE__)(name, TC_CAT(tc_fn_, __LINE__));    \
    static void TC_CAT(tc_fn_, __LINE__)()
#define TC_CHECK(cond) tc::check_msg((cond), #cond, __FILE__, __LINE__)
