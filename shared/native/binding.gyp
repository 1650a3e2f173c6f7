{
  "targets": [
    {
      "target_name": "native",
      "sources": ["native.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
