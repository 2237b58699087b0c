<?php
// ?code=N answers with that status; ?to=/x redirects with Location only (CGI: 302).
if (isset($_GET['to'])) {
    header('Location: ' . $_GET['to']);
    exit;
}
$code = isset($_GET['code']) ? (int) $_GET['code'] : 200;
http_response_code($code);
header('Set-Cookie: a=1; Path=/', false);
header('Set-Cookie: b=2; Path=/', false);
echo "status $code\n";
