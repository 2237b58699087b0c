<?php
$body = file_get_contents('php://input');
header('Content-Type: application/json');
echo json_encode(array(
    'method' => $_SERVER['REQUEST_METHOD'],
    'body_len' => strlen($body),
    'body_sha256' => hash('sha256', $body),
    'post' => $_POST,
    'get' => $_GET,
    'path_info' => $_SERVER['PATH_INFO'] ?? null,
));
