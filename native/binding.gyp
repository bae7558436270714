{
  "targets": [
    {
      "target_name": "memdedup",
      # One file per syscall family; addon.cc only registers them.
      "sources": ["<!@(ls -1 native/*.cc)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # Exceptions: node-addon-api's C++ exception mode is off (NAPI_DISABLE_CPP_EXCEPTIONS: a JS
      # error is a pending N-API exception, never a C++ throw), and native code throws nothing
      # itself: it returns -errno and lib/ builds the Error (like Node core's fs bindings). The
      # compiler's exceptions stay on (-fno-exceptions removed) for one reason: std::bad_alloc,
      # thrown by std::vector, std::string (Utf8Value, messages) and `new`, must unwind to NoAbort
      # (native/addon.h), which every exported function is wrapped in, and become the JS error
      # ERR_MEMORY_ALLOCATION_FAILED; with -fno-exceptions it would reach std::terminate: an abort.
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_DISABLE_CPP_EXCEPTIONS",
        "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS",
        "_GNU_SOURCE"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-fstack-protector-strong", "-fvisibility=hidden", "-O2"],
      "cflags_cc": ["-std=gnu++20", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fstack-protector-strong", "-fvisibility=hidden", "-O2"]
    }
  ]
}
