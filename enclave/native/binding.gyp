{
  "targets": [
    {
      "target_name": "sockets",
      "sources": ["sockets.c"],
      "cflags": ["-std=c11", "-Wall", "-Wextra", "-Werror"]
    }
  ]
}
