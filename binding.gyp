{
  "targets": [
    {
      "target_name": "memdedup",
      # One file per syscall family; addon.cc only registers them.
      "sources": ["<!@(ls -1 native/*.cc)"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      # Exception mode: C++ exceptions off. Native code never throws; it returns
      # -errno and lib/ builds the Error (like Node core's fs bindings).
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
