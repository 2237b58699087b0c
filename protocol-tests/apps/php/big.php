<?php
// ?mb=N MiB in 64 KiB pieces, flushed as they go.
$mb = isset($_GET['mb']) ? (int) $_GET['mb'] : 10;
$piece = str_repeat(implode('', array_map('chr', range(0, 255))), 256);
header('Content-Type: application/octet-stream');
for ($i = 0; $i < $mb * 16; $i++) {
    echo $piece;
    flush();
}
