{
  "targets": [
    {
      "target_name": "vsock",
      "sources": ["vsock.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
