<?php
// Promises 1 MB, sends 64 KiB, then the worker dies.
header('Content-Length: 1000000');
echo str_repeat('x', 65536);
flush();
posix_kill(getmypid(), 9);
