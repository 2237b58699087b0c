<?php
// The CGI variables php-fpm passed on (minus per-request clocks), plus what the body was.
$seen = array();
foreach ($_SERVER as $k => $v) {
    if (is_string($v) && $k === strtoupper($k) && $k !== 'REQUEST_TIME' && $k !== 'REQUEST_TIME_FLOAT') {
        $seen[$k] = $v;
    }
}
$body = file_get_contents('php://input');
$seen['_body_len'] = (string) strlen($body);
$seen['_body_sha256'] = hash('sha256', $body);
$seen['_post'] = json_encode($_POST);
header('Content-Type: application/json');
echo json_encode($seen);
